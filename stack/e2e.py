"""`make e2e`: the whole drift-to-new-model loop against the running embedded stack, as a user
would drive it (the seed's scripts/e2e_test.sh, completed): serving → drift → Airflow REST API →
KFP pipeline → MLflow registry → the serving app on the new champion. Logs a report line per
step and stops at the first failure (`StepFailed`); `python -m stack e2e` prints the verdict."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import requests

from driftloop.contract import DAG_ID
from stack.config import StackConfig, read_env_file
from stack.waiting import NotYet, poll

log = logging.getLogger(__name__)

SEED_SHIFTED_SAMPLE = [7.1, 5.5, 3.4, 2.2]  # the seed's "100 shifted samples"
EVENT_RUN_LINKS = ("KFP run", "MLflow run", "Drift report")  # the submit task's operator extra links


class StepFailed(Exception):
    pass


#: The errors that end the check with a verdict (not a traceback).
E2E_ERRORS = (StepFailed, requests.RequestException, KeyError, ValueError)


@dataclass
class Report:
    """The steps done so far and the timings measured; `seconds` since the check began."""

    n: int = 0
    t0: float = field(default_factory=time.monotonic)
    timings: dict[str, float] = field(default_factory=dict)

    def step(self, title: str) -> float:
        self.n += 1
        log.info("[%2d] %s ...", self.n, title)
        return time.monotonic()

    def ok(self, detail: str) -> None:
        log.info("     ok: %s", detail)

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.t0


def check(cond: bool, message: str) -> None:
    if not cond:
        raise StepFailed(message)


class Airflow:
    def __init__(self, url: str, user: str, password: str) -> None:
        self.url = url.rstrip("/")
        resp = requests.post(f"{self.url}/auth/token", json={"username": user, "password": password}, timeout=30)
        check(
            resp.status_code in (200, 201), f"Airflow /auth/token answered HTTP {resp.status_code}: {resp.text[:200]}"
        )
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {resp.json()['access_token']}"

    def trigger(self, conf: dict[str, Any]) -> str:
        resp = self.session.post(
            f"{self.url}/api/v2/dags/{DAG_ID}/dagRuns", json={"logical_date": None, "conf": conf}, timeout=30
        )
        check(resp.status_code in (200, 201), f"trigger {DAG_ID} answered HTTP {resp.status_code}: {resp.text[:300]}")
        return str(resp.json()["dag_run_id"])

    def wait(self, run_id: str, timeout: float = 900) -> str:
        """The final state (success or failed) of DAG run `run_id`."""

        def finished() -> str:
            resp = self.session.get(f"{self.url}/api/v2/dags/{DAG_ID}/dagRuns/{run_id}", timeout=30)
            state = resp.json().get("state", "?") if resp.ok else f"HTTP {resp.status_code}"
            if state not in ("success", "failed"):
                raise NotYet(state)
            return str(state)

        try:
            return poll(finished, timeout=timeout, interval=3.0)
        except NotYet as exc:
            raise StepFailed(f"DAG run {run_id} still {exc} after {timeout:.0f}s") from None

    def run_ids(self, run_type: str) -> set[str]:
        """Ids of the DAG's latest 100 runs of one type (`manual`, `scheduled`, `asset_triggered`)."""
        resp = self.session.get(
            f"{self.url}/api/v2/dags/{DAG_ID}/dagRuns",
            params=[("run_type", run_type), ("order_by", "-run_after"), ("limit", 100)],
            timeout=30,
        )
        check(resp.ok, f"listing {DAG_ID} runs answered HTTP {resp.status_code}: {resp.text[:200]}")
        return {str(run["dag_run_id"]) for run in resp.json().get("dag_runs", [])}

    def links(self, run_id: str, task_id: str) -> dict[str, str | None]:
        """The task's operator extra links (name → URL), as the UI shows them."""
        resp = self.session.get(
            f"{self.url}/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}/links", timeout=30
        )
        check(resp.ok, f"extra links of {task_id} answered HTTP {resp.status_code}: {resp.text[:200]}")
        return dict(resp.json().get("extra_links") or {})

    def task_states(self, run_id: str) -> dict[str, str]:
        resp = self.session.get(f"{self.url}/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances", timeout=30)
        return {ti["task_id"]: ti["state"] for ti in resp.json().get("task_instances", [])}

    def wait_unpaused_idle(self, timeout: float = 600) -> None:
        """max_active_runs=1: let a run the scheduler may have started on its own finish first."""

        def idle() -> None:
            resp = self.session.get(
                f"{self.url}/api/v2/dags/{DAG_ID}/dagRuns", params={"state": ["running", "queued"]}, timeout=30
            )
            if not resp.ok or resp.json().get("dag_runs"):
                raise NotYet("active run")

        try:
            poll(idle, timeout=timeout, interval=3.0)
        except NotYet:
            raise StepFailed(f"{DAG_ID} still has an active run after {timeout:.0f}s") from None


def local_run_count(cfg: StackConfig) -> int:
    runs = cfg.root / "kfp-runs" / "runs"
    return len([p for p in runs.iterdir() if p.is_dir()]) if runs.exists() else 0


def send_shifted(serving: str, n: int = 100) -> None:
    for _ in range(n):
        resp = requests.post(f"{serving}/predict", json={"features": SEED_SHIFTED_SAMPLE}, timeout=30)
        check(resp.status_code == 200, f"/predict answered HTTP {resp.status_code}: {resp.text[:200]}")


def post_feedback(serving: str, labeller: dict[str, str], n: int = 60) -> int:
    """Labelled rows for the shifted region, without predicting them (they stay out of the drift window).

    The world says the shifted region is class 0, whatever the champion predicts there (the same label
    on every run, so that a second `make e2e` on the same stack does not contradict the first)."""
    rng = np.random.default_rng(7)
    rows = (np.array(SEED_SHIFTED_SAMPLE) + rng.normal(0, 0.1, size=(n, 4))).round(2).tolist()
    fb = requests.post(
        f"{serving}/feedback",
        json={"instances": rows, "labels": [0] * n, "source": "e2e"},
        headers=labeller,
        timeout=30,
    )
    check(fb.status_code in (200, 201), f"/feedback answered HTTP {fb.status_code}: {fb.text[:200]}")
    return n


def wait_newer_champion(serving: str, old_version: int, timeout: float) -> dict[str, Any]:
    def newer_champion() -> dict[str, Any]:
        info: dict[str, Any] = requests.get(f"{serving}/model/info", timeout=30).json()
        if int(info.get("version") or 0) <= old_version:
            raise NotYet(f"still on version {info.get('version')} (was {old_version})")
        return info

    try:
        return poll(newer_champion, timeout=timeout, interval=1.0)
    except NotYet as exc:
        raise StepFailed(f"{exc} after {timeout:.0f}s") from None


def scheduled_run(airflow: Airflow, cfg: StackConfig, submit_state: str, new_runs: int) -> dict[str, str]:
    """Trigger the path the schedule takes (force=false), wait for it, check what it submitted."""
    runs_before = local_run_count(cfg)
    run_id = airflow.trigger({"force": False})
    state = airflow.wait(run_id)
    states = airflow.task_states(run_id)
    check(
        state == "success" and states.get("submit_retrain") == submit_state,
        f"run {run_id} ended {state} with tasks {states}",
    )
    submitted = local_run_count(cfg) - runs_before
    check(submitted == new_runs, f"{submitted} pipeline runs submitted, expected {new_runs}")
    return states


def run_e2e(cfg: StackConfig, scheduled_retrain: bool = True) -> Report:
    """The whole check; the report of its steps and timings. Raises one of E2E_ERRORS on a failure.
    `scheduled_retrain=False` leaves out the scheduled run that finds drift and retrains (the suite's
    tests/dags run that path with dag.test() and a real local run; `make e2e` keeps it)."""
    env = read_env_file(cfg.endpoints_file)
    check(bool(env), f"{cfg.endpoints_file} not found: start the stack with `make run` first")
    serving, token = env["SERVING_URL"], env["SERVING_ADMIN_TOKEN"]
    admin = {"Authorization": f"Bearer {token}"}
    labeller = {"Authorization": f"Bearer {env['SERVING_FEEDBACK_TOKEN']}"}
    report = Report()

    report.step("Airflow login; wait until no drift_retrain run is active")
    airflow = Airflow(env["AIRFLOW_URL"], env["AIRFLOW_USER"], env["AIRFLOW_PASSWORD"])
    # The scheduler starts the latest scheduled run as soon as the DAG appears: let it finish before
    # this test creates drift, so that every run counted below is one this test triggered.
    airflow.wait_unpaused_idle()
    report.ok("token from /auth/token; no active run")

    report.step("health")
    health = requests.get(f"{serving}/health", timeout=30)
    check(health.status_code == 200, f"/health answered HTTP {health.status_code}: {health.text[:200]}")
    report.ok(health.text.strip()[:120])

    report.step("model info")
    info = requests.get(f"{serving}/model/info", timeout=30).json()
    check(info.get("version") is not None, f"/model/info has no version: {info}")
    old_version = int(info["version"])
    report.ok(f"{info['name']} version {old_version} (alias {info.get('alias')})")

    report.step("prediction")
    pred = requests.post(f"{serving}/predict", json={"features": [5.1, 3.5, 1.4, 0.2]}, timeout=30)
    check(pred.status_code == 200, f"/predict answered HTTP {pred.status_code}: {pred.text[:200]}")
    report.ok(pred.text.strip()[:120])

    report.step("drift as an asset event: reset the window, label the shifted region, 100 shifted samples")
    events_before = airflow.run_ids("asset_triggered")
    reset = requests.post(f"{serving}/drift/reset", headers=admin, timeout=30)
    check(reset.status_code == 200, f"/drift/reset answered HTTP {reset.status_code}: {reset.text[:200]}")
    labelled = post_feedback(serving, labeller)
    send_shifted(serving)
    t_last_row = time.monotonic()
    report.ok(f"{labelled} labelled rows, then 100 shifted rows; the watcher polls /drift/status")

    report.step("drift detected")
    drift = requests.get(f"{serving}/drift/status", timeout=30).json()
    check(drift.get("drift_detected") is True, f"drift not detected: {drift}")
    check(drift.get("labelled_rows_since_served", 0) > 0, f"labels not counted: {drift}")
    report.ok(
        f"{drift['samples']} samples; drifting features: "
        f"{[k for k, v in drift.get('features', {}).items() if v.get('drift')]}"
    )

    report.step("the asset event starts drift_retrain; the serving app reports a newer champion")
    info = wait_newer_champion(serving, old_version, timeout=600)
    event_seconds = time.monotonic() - t_last_row
    report.timings["drift_to_new_champion_s"] = round(event_seconds, 1)
    event_runs = airflow.run_ids("asset_triggered") - events_before
    check(len(event_runs) == 1, f"{len(event_runs)} asset-triggered runs, expected exactly one: {event_runs}")
    (event_run,) = event_runs
    report.ok(f"version {info['version']} served {event_seconds:.0f}s after the last shifted row (goal < 180 s)")

    report.step("the asset-triggered run succeeded and its submit task links the runs and the report")
    state = airflow.wait(event_run)
    states = airflow.task_states(event_run)
    check(
        state == "success" and states.get("drift_event") == "success" and states.get("submit_retrain") == "success",
        f"asset-triggered run {event_run} ended {state}: tasks {states}",
    )
    links = airflow.links(event_run, "submit_retrain")
    check(all(links.get(name) for name in EVENT_RUN_LINKS), f"extra links of submit_retrain: {links}")
    report.ok(f"run {event_run}; links {sorted(links)}")
    old_version = int(info["version"])

    report.step("drift against the new champion without new labels: the watcher starts nothing")
    requests.post(f"{serving}/drift/reset", headers=admin, timeout=30)
    send_shifted(serving)
    drift = requests.get(f"{serving}/drift/status", timeout=30).json()
    check(drift.get("drift_detected") is True, f"drift not detected: {drift}")
    check(drift.get("labelled_rows_since_served") == 0, f"labels since the new champion: {drift}")
    report.ok(f"drift_detected true, 0 labelled rows since version {drift.get('model_version')} was served")

    airflow.wait_unpaused_idle()
    feedback_url = f"{serving}/feedback/export"

    t0 = report.step("trigger drift_retrain through the REST API with force=true")
    runs_before = local_run_count(cfg)
    run_id = airflow.trigger({"force": True, "feedback_url": feedback_url})
    report.ok(f"DAG run {run_id}")

    report.step("DAG run succeeds")
    state = airflow.wait(run_id)
    check(state == "success", f"DAG run {run_id} ended {state}: tasks {airflow.task_states(run_id)}")
    report.ok(f"tasks {airflow.task_states(run_id)}")

    report.step("serving app reports a newer champion")
    info = wait_newer_champion(serving, old_version, timeout=120)
    forced_seconds = time.monotonic() - t0
    report.timings["forced_trigger_to_new_champion_s"] = round(forced_seconds, 1)
    check(local_run_count(cfg) == runs_before + 1, "the forced DAG run did not submit exactly one pipeline run")
    report.ok(f"version {info['version']} served {forced_seconds:.0f}s after the trigger; one pipeline run")

    report.step("drift window restarted against the new model")
    drift = requests.get(f"{serving}/drift/status", timeout=30).json()
    check(drift.get("samples", 1) == 0 and drift.get("drift_detected") is False, f"window not restarted: {drift}")
    check(
        str(drift.get("model_version")) == str(info["version"]), f"window compares against {drift.get('model_version')}"
    )
    report.ok(f"0 samples, comparing against version {drift.get('model_version')}")

    report.step("scheduled path without drift: nothing submitted")
    report.ok(f"tasks {scheduled_run(airflow, cfg, submit_state='skipped', new_runs=0)}")

    if scheduled_retrain:
        report.step("scheduled path with drift: exactly one run submitted")
        send_shifted(serving)
        report.ok(f"tasks {scheduled_run(airflow, cfg, submit_state='success', new_runs=1)}")

    report.step("still exactly one asset-triggered run (drift without new labels starts none)")
    event_runs = airflow.run_ids("asset_triggered") - events_before
    check(len(event_runs) == 1, f"{len(event_runs)} asset-triggered runs, expected exactly one: {event_runs}")
    report.ok(f"{event_runs}")

    start_file = cfg.root / "last-start-seconds"
    if start_file.exists():
        report.timings["make_run_to_healthy_s"] = float(start_file.read_text())
    return report
