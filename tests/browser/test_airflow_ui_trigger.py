"""The Airflow UI's trigger form for `drift_retrain`, driven in a real browser (Debian's Chromium, Playwright).

What a user does: log in on Airflow's login page with the stack's generated password, open the DAG,
press *Trigger*, (tick `force`), press *Trigger* in the form, and watch the run in the UI.

* ``test_forced_run_from_the_ui_form_serves_a_new_champion``: the form opens valid (its Trigger button
  is enabled: with ``Param("", type="string")`` params it stayed disabled), ``force`` ticked, the run
  reaches *Success* on its run page and in the Runs tab, the drift check was skipped by the branch,
  and the serving app then serves a newer model version than before.
* ``test_default_run_from_the_ui_form_checks_drift_and_submits_nothing``: the form sent untouched runs
  the drift check (the window was just reset, so it is still collecting: ``check_drift`` runs and
  skips itself, its log says why), ``submit_retrain`` is skipped and no pipeline run is created.
* ``test_the_enabled_button_check_catches_the_old_param_declaration``: a guard for the check above it:
  with the params shown to the browser as they were declared before the fix, the button is disabled.

Each check is made in the UI first (the page is polled, not only the REST API), then confirmed through
the REST API. Screenshots of every key step go to ``build/test-output/browser/`` (git-ignored) and
their paths are printed (``pytest -s`` shows them).

The stack is the session fixture ``embedded_stack`` (~2.5 min to start). While developing, an already
running stack can be used instead: ``DRIFTLOOP_TEST_STACK_DIR=/path/to/stackdir`` (its endpoints.env is
read; the tests then trigger runs and reset the drift window on that stack).

Run: ``.venv/bin/python -m pytest tests/browser -m browser -x -q -s``. The forced run takes 60-120 s
on a 2-core machine (a failed pipeline attempt is retried by Airflow after 2 min, hence the timeouts).
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import requests

from driftloop.contract import DAG_ID

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
SHOTS = REPO / "build" / "test-output" / "browser"
#: A forced run: ~60-120 s; a failed pipeline attempt is retried after retry_delay (2 min), and the
#: run may queue behind a scheduled run (max_active_runs=1).
RUN_TIMEOUT = 900
UI_TIMEOUT_MS = 60_000

pytestmark = [
    pytest.mark.browser,
    pytest.mark.stack,
    pytest.mark.timeout(RUN_TIMEOUT + 900),  # the stack fixture's start (~2.5 min) counts for the first test
    pytest.mark.skipif(
        not os.path.exists(CHROMIUM),
        reason=f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium; "
        "CI does it in .ci/run). No browser is downloaded by these tests.",
    ),
]

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed in this venv")
expect = sync_api.expect


# -- the stack and its APIs ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stack(request) -> dict:
    """Endpoints of the running stack, plus ``STACK_DIR``."""
    from stack.config import read_env_file

    existing = os.environ.get("DRIFTLOOP_TEST_STACK_DIR")
    if existing:
        root = Path(existing).resolve()
    else:
        root = request.getfixturevalue("embedded_stack").root
    endpoints = dict(read_env_file(root / "endpoints.env"))
    endpoints["STACK_DIR"] = str(root)
    return endpoints


def _http(
    method: str, url: str, *, token: str | None = None, body: dict | None = None, timeout: float = 30
) -> tuple[int, Any]:
    """(status, parsed JSON or text) of one request; HTTP errors are returned, not raised."""
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    resp = requests.request(method, url, json=body, headers=headers, timeout=timeout)
    try:
        return resp.status_code, resp.json()
    except ValueError:
        return resp.status_code, resp.text


class AirflowApi:
    """The REST API (v2, JWT from /auth/token), used to confirm what the UI showed."""

    def __init__(self, url: str, user: str, password: str):
        self.url = url.rstrip("/")
        status, body = _http("POST", f"{self.url}/auth/token", body={"username": user, "password": password})
        assert status in (200, 201), f"POST /auth/token answered {status}: {body}"
        self.token = body["access_token"]

    def get(self, path: str):
        return _http("GET", self.url + path, token=self.token)

    def run_path(self, run_id: str) -> str:
        return f"/api/v2/dags/{DAG_ID}/dagRuns/{urllib.parse.quote(run_id, safe='')}"

    def run(self, run_id: str) -> dict:
        status, body = self.get(self.run_path(run_id))
        assert status == 200, f"GET dag run {run_id}: {status} {body}"
        return body

    def task_instances(self, run_id: str) -> dict[str, dict]:
        status, body = self.get(self.run_path(run_id) + "/taskInstances")
        assert status == 200, f"GET task instances of {run_id}: {status} {body}"
        return {ti["task_id"]: ti for ti in body["task_instances"]}

    def xcom(self, run_id: str, task_id: str, key: str = "return_value"):
        return self.get(f"{self.run_path(run_id)}/taskInstances/{task_id}/xcomEntries/{key}")

    def log_text(self, run_id: str, task_id: str, try_number: int) -> str:
        status, body = self.get(f"{self.run_path(run_id)}/taskInstances/{task_id}/logs/{try_number}")
        assert status == 200, f"GET log of {task_id} try {try_number}: {status} {body}"
        content = body.get("content") if isinstance(body, dict) else body
        if isinstance(content, list):
            return "\n".join(str(line.get("event", line)) if isinstance(line, dict) else str(line) for line in content)
        return str(content)


@pytest.fixture(scope="module")
def api(stack) -> AirflowApi:
    return AirflowApi(stack["AIRFLOW_URL"], stack["AIRFLOW_USER"], stack["AIRFLOW_PASSWORD"])


def served_version(stack) -> int:
    status, info = _http("GET", stack["SERVING_URL"] + "/model/info")
    assert status == 200, f"GET /model/info answered {status}: {info}"
    return int(info["version"])


def kfp_run_count(stack) -> int:
    """Pipeline runs the local KFP backend has recorded (one directory a run) in the stack's runs dir."""
    runs = Path(stack["STACK_DIR"]) / "kfp-runs" / "runs"
    return sum(1 for p in runs.iterdir() if p.is_dir()) if runs.is_dir() else 0


# -- the browser -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as pw:
        # Debian's Chromium, never a downloaded browser; the networking flags keep it off the internet.
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


class Shots:
    """Numbered screenshots of one test in build/test-output/browser/ (paths printed)."""

    def __init__(self, page, prefix: str):
        self.page, self.prefix, self.n = page, prefix, 0
        SHOTS.mkdir(parents=True, exist_ok=True)
        for old in SHOTS.glob(f"{prefix}-*.png"):
            old.unlink()

    def take(self, step: str, *, full_page: bool = False) -> Path:
        self.n += 1
        path = SHOTS / f"{self.prefix}-{self.n:02d}-{step}.png"
        self.page.screenshot(path=str(path), full_page=full_page)
        print(f"  screenshot: {path}", flush=True)
        return path


@pytest.fixture
def ui(browser, stack, request):
    """A fresh browser context, logged in through Airflow's login page; yields (page, shots)."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    prefix = re.sub(r"^test_", "", request.node.name)[:40].rstrip("_")
    shots = Shots(page, prefix)
    failed_before = request.session.testsfailed

    def failure_shot():
        try:
            shots.take("at-failure", full_page=True)
        except Exception:  # the page may be gone
            pass

    try:
        try:
            login(page, stack, shots)
        except Exception:
            failure_shot()
            raise
        yield page, shots
        if request.session.testsfailed > failed_before:
            failure_shot()
    finally:
        context.close()


def login(page, stack, shots: Shots) -> None:
    page.goto(f"{stack['AIRFLOW_URL']}/dags/{DAG_ID}")
    page.wait_for_url(re.compile(r"/auth/login"))  # not logged in: Airflow sends the browser to its login page
    page.get_by_label("Username").fill(stack["AIRFLOW_USER"])
    page.get_by_label("Password").fill(stack["AIRFLOW_PASSWORD"])
    shots.take("login-page")
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(rf"/dags/{DAG_ID}/?$"))
    expect(page.get_by_role("link", name="check_drift", exact=True).first).to_be_visible()
    shots.take("dag-page")


# -- steps in the UI ---------------------------------------------------------------------------------------
def open_trigger_form(page, shots: Shots):
    """Press the DAG page's Trigger button; the form must open valid (its own Trigger button enabled)."""
    page.get_by_role("button", name="Trigger Dag").click()
    form = page.get_by_role("dialog")
    expect(form.get_by_text(f"Trigger Dag - {DAG_ID}")).to_be_visible()
    expect(form.get_by_text("Run Parameters")).to_be_visible()
    force = form.get_by_role("checkbox", name="force")
    expect(force).to_be_attached()
    # The optional params are not required in the form (their type includes "null")...
    for name in ("data_uri", "feedback_url", "mlflow_tracking_uri", "serving_url"):
        field = form.locator(f"input[name='element_{name}']")
        expect(field).to_be_visible()
        assert field.get_attribute("required") is None, f"{name} is required in the trigger form"
    # ...so the form is valid as it opens: the bug was a disabled Trigger button here.
    submit = form.get_by_role("button", name="Trigger", exact=True)
    expect(submit).to_be_enabled()
    shots.take("trigger-form")
    return form, force, submit


def press_trigger(page, submit) -> tuple[str, dict]:
    """Press the form's Trigger button; returns the new run's id and the conf the UI sent."""

    def is_trigger(response) -> bool:
        return response.request.method == "POST" and response.url.rstrip("/").endswith(f"/dags/{DAG_ID}/dagRuns")

    with page.expect_response(is_trigger, timeout=UI_TIMEOUT_MS) as info:
        submit.click()
    response = info.value
    assert response.ok, f"the UI's trigger request answered {response.status}: {response.text()}"
    sent = response.request.post_data_json or {}
    run_id = response.json()["dag_run_id"]
    print(f"  triggered {run_id} from the UI with conf {json.dumps(sent.get('conf'))}", flush=True)
    # The UI then shows the new run's page.
    expect(page.get_by_role("heading", name=run_id, exact=True)).to_be_visible()
    return run_id, sent.get("conf") or {}


def run_state_badge(page, run_id: str):
    """The state badge next to the run id in the run page's header."""
    return page.get_by_role("heading", name=run_id, exact=True).locator("xpath=..").get_by_test_id("state-badge")


def wait_for_run_in_ui(page, run_id: str, shots: Shots, timeout: float = RUN_TIMEOUT) -> str:
    """Poll the run page until the header shows a final state; returns it (lower case)."""
    url = page.url
    start = time.monotonic()
    last_state, last_reload, last_shot = None, start, 0.0
    while True:
        badge = run_state_badge(page, run_id)
        state = badge.inner_text(timeout=UI_TIMEOUT_MS).strip().lower() if badge.count() else "(no state yet)"
        elapsed = time.monotonic() - start
        if state != last_state:
            print(f"  [{elapsed:5.0f}s] run page shows: {state}", flush=True)
            last_state = state
        if state in ("success", "failed"):
            return state
        if elapsed - last_shot >= 60:
            shots.take("run-in-progress")
            last_shot = elapsed
        assert elapsed < timeout, f"run {run_id} still '{state}' in the UI after {timeout:.0f}s"
        time.sleep(5)
        if time.monotonic() - last_reload >= 30:  # the page refreshes itself; a reload is a backstop
            page.goto(url)
            expect(page.get_by_role("heading", name=run_id, exact=True)).to_be_visible()
            last_reload = time.monotonic()


def task_states_in_ui(page, tasks: list[str]) -> dict[str, str]:
    """State of each task as the run page's Task Instances table shows it. Read after a reload: the
    header and the table refresh on their own timers, and a header already showing the final state
    once stood beside a table still showing the last task as 'no status' (CI, 2026-12-02)."""
    page.reload()
    expect(page.get_by_role("row").filter(has=page.get_by_role("link", name=tasks[0], exact=True))).to_have_count(1)
    states = {}
    for task_id in tasks:
        row = page.get_by_role("row").filter(has=page.get_by_role("link", name=task_id, exact=True))
        expect(row).to_have_count(1)
        states[task_id] = row.get_by_test_id("state-badge").inner_text().strip().lower()
    return states


def run_state_in_runs_tab(page, stack, run_id: str, shots: Shots, step: str) -> str:
    page.goto(f"{stack['AIRFLOW_URL']}/dags/{DAG_ID}/runs")
    row = page.get_by_role("row").filter(has=page.get_by_role("link", name=run_id, exact=True))
    expect(row).to_have_count(1)
    state = row.get_by_test_id("state-badge").inner_text().strip().lower()
    shots.take(step)
    return state


TASKS = [
    "check_params",
    "check_drift",
    "drift_event",
    "capture_drift_report",
    "force_retrain",
    "submit_retrain",
    "confirm_champion",
]


# -- the tests ---------------------------------------------------------------------------------------------
def test_forced_run_from_the_ui_form_serves_a_new_champion(ui, stack, api):
    page, shots = ui
    before = served_version(stack)
    print(f"  serving app serves version {before} before the trigger", flush=True)

    form, force, submit = open_trigger_form(page, shots)
    expect(force).not_to_be_checked()
    # The switch's input is visually hidden: click its label, as a user clicks the switch.
    form.locator("label").filter(has=page.get_by_role("checkbox", name="force")).click()
    expect(force).to_be_checked()
    expect(submit).to_be_enabled()
    shots.take("force-ticked")

    t0 = time.monotonic()
    run_id, conf = press_trigger(page, submit)
    assert conf.get("force") is True, conf
    shots.take("run-page-after-trigger")

    state = wait_for_run_in_ui(page, run_id, shots)
    shots.take("run-final")
    assert state == "success", f"forced run {run_id} ended '{state}' in the UI"
    print(f"  forced run succeeded in {time.monotonic() - t0:.0f}s", flush=True)
    ui_states = task_states_in_ui(page, TASKS)
    assert ui_states == {
        "check_params": "success",
        "check_drift": "skipped",
        "drift_event": "skipped",
        "capture_drift_report": "skipped",
        "force_retrain": "success",
        "submit_retrain": "success",
        "confirm_champion": "success",
    }, ui_states
    assert run_state_in_runs_tab(page, stack, run_id, shots, "runs-tab") == "success"

    # The REST API agrees, and the run came from the UI with force=true.
    run = api.run(run_id)
    assert run["state"] == "success" and run["conf"].get("force") is True, run
    assert str(run.get("triggered_by", "ui")).lower() == "ui", run
    tis = api.task_instances(run_id)
    assert {t: ti["state"] for t, ti in tis.items()} == ui_states
    status, xcom = api.xcom(run_id, "confirm_champion")
    assert status == 200, xcom
    outcome = xcom["value"]
    print(f"  pipeline outcome: {outcome}", flush=True)
    assert outcome["decision"] == "accepted", outcome

    # The serving app serves the new champion (confirm_champion waited for it; allow a moment more).
    deadline = time.monotonic() + 60
    after = served_version(stack)
    while after <= before and time.monotonic() < deadline:
        time.sleep(2)
        after = served_version(stack)
    print(f"  serving app serves version {after} after the run", flush=True)
    assert after > before, f"serving app still serves version {after} (before the trigger: {before})"
    assert str(after) == str(outcome["served_version"]) == str(outcome["registered_version"]), outcome


def test_default_run_from_the_ui_form_checks_drift_and_submits_nothing(ui, stack, api):
    page, shots = ui
    # An empty drift window: the check finds no drift ("collecting samples"), whatever ran before.
    status, body = _http("POST", stack["SERVING_URL"] + "/drift/reset", token=stack["SERVING_ADMIN_TOKEN"])
    assert status == 200, f"POST /drift/reset answered {status}: {body}"
    runs_before = kfp_run_count(stack)
    version_before = served_version(stack)

    form, force, submit = open_trigger_form(page, shots)
    expect(force).not_to_be_checked()  # nothing touched: the defaults
    run_id, conf = press_trigger(page, submit)
    assert conf.get("force") is False, conf
    shots.take("run-page-after-trigger")

    state = wait_for_run_in_ui(page, run_id, shots, timeout=300)
    shots.take("run-final")
    assert state == "success", f"run {run_id} ended '{state}' in the UI"
    ui_states = task_states_in_ui(page, TASKS)
    assert ui_states == {
        "check_params": "success",
        "check_drift": "skipped",
        "drift_event": "skipped",
        "capture_drift_report": "skipped",
        "force_retrain": "skipped",
        "submit_retrain": "skipped",
        "confirm_champion": "skipped",
    }, ui_states

    # check_drift *ran* (the sensor skipped itself; it was not skipped by the branch): its log says why.
    row = page.get_by_role("row").filter(has=page.get_by_role("link", name="check_drift", exact=True))
    row.get_by_role("link", name="check_drift", exact=True).click()
    expect(page.get_by_text("No drift", exact=False).first).to_be_visible()
    shots.take("check-drift-log")
    assert run_state_in_runs_tab(page, stack, run_id, shots, "runs-tab") == "success"

    # The REST API agrees: check_drift ran once and skipped, submit_retrain never ran, nothing submitted.
    run = api.run(run_id)
    assert run["state"] == "success" and run["conf"].get("force") is False, run
    tis = api.task_instances(run_id)
    assert {t: ti["state"] for t, ti in tis.items()} == ui_states
    check = tis["check_drift"]
    assert check["try_number"] >= 1 and check["start_date"], check
    log = api.log_text(run_id, "check_drift", check["try_number"])
    assert "No drift" in log, log[-2000:]
    assert tis["submit_retrain"]["try_number"] == 0, tis["submit_retrain"]
    status, _ = api.xcom(run_id, "submit_retrain", "run_id")
    assert status == 404, "submit_retrain pushed a pipeline run id"
    assert kfp_run_count(stack) == runs_before, "a pipeline run was submitted"
    assert served_version(stack) == version_before


def test_the_enabled_button_check_catches_the_old_param_declaration(ui):
    """Guard for the two tests above: their "Trigger button enabled" check does catch the bug. The DAG's
    params are shown to this browser as they were declared before the fix (``type="string"``, empty
    default) by rewriting the UI's DAG-details response: the form then flags "Run Parameters" and its
    Trigger button is disabled. Nothing is triggered."""
    page, shots = ui
    rewritten = []

    def old_declaration(route):
        response = route.fetch()
        body = response.json()
        for name, spec in (body.get("params") or {}).items():
            if isinstance(spec, dict) and (spec.get("schema") or {}).get("type") == ["null", "string"]:
                spec["schema"]["type"] = "string"
                spec["value"] = ""
                rewritten.append(name)
        route.fulfill(response=response, body=json.dumps(body))

    page.route(re.compile(rf"/api/v2/dags/{DAG_ID}/details(\?.*)?$"), old_declaration)
    page.reload()
    page.get_by_role("button", name="Trigger Dag").click()
    form = page.get_by_role("dialog")
    expect(form.get_by_text("Run Parameters")).to_be_visible()
    assert {"data_uri", "feedback_url", "mlflow_tracking_uri", "serving_url"} <= set(rewritten), (
        f"the UI's DAG details request was not seen or had no optional params (rewrote {rewritten})"
    )
    expect(form.locator("input[name='element_data_uri']")).to_have_attribute("required", "")
    expect(form.get_by_role("button", name="Trigger", exact=True)).to_be_disabled()
    shots.take("old-declaration-trigger-disabled")
