"""`make e2e`: the whole drift-to-new-model loop against the running embedded stack, as a user
would drive it (the seed's scripts/e2e_test.sh, completed): serving → drift → Airflow REST API →
KFP pipeline → MLflow registry → the serving app on the new champion. Prints a report line per
step and exits non-zero on the first failure."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import requests

from stack.config import StackConfig, read_env_file

SEED_SHIFTED_SAMPLE = [7.1, 5.5, 3.4, 2.2]  # the seed's "100 shifted samples"
DAG_ID = "drift_retrain"


class StepFailed(Exception):
    pass


class Report:
    def __init__(self):
        self.n = 0
        self.t0 = time.monotonic()
        self.timings: dict[str, float] = {}

    def step(self, title: str):
        self.n += 1
        print(f"[{self.n:2}] {title} ...", flush=True)
        return time.monotonic()

    def ok(self, detail: str):
        print(f"     ok: {detail}", flush=True)


def check(cond: bool, message: str) -> None:
    if not cond:
        raise StepFailed(message)


class Airflow:
    def __init__(self, url: str, user: str, password: str):
        self.url = url.rstrip("/")
        resp = requests.post(f"{self.url}/auth/token", json={"username": user, "password": password}, timeout=30)
        check(resp.status_code in (200, 201), f"Airflow /auth/token answered HTTP {resp.status_code}: {resp.text[:200]}")
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {resp.json()['access_token']}"

    def trigger(self, conf: dict) -> str:
        resp = self.session.post(f"{self.url}/api/v2/dags/{DAG_ID}/dagRuns",
                                 json={"logical_date": None, "conf": conf}, timeout=30)
        check(resp.status_code in (200, 201), f"trigger {DAG_ID} answered HTTP {resp.status_code}: {resp.text[:300]}")
        return resp.json()["dag_run_id"]

    def wait(self, run_id: str, timeout: float = 900) -> str:
        deadline = time.monotonic() + timeout
        state = "?"
        while time.monotonic() < deadline:
            resp = self.session.get(f"{self.url}/api/v2/dags/{DAG_ID}/dagRuns/{run_id}", timeout=30)
            state = resp.json().get("state", "?") if resp.ok else f"HTTP {resp.status_code}"
            if state in ("success", "failed"):
                return state
            time.sleep(3)
        raise StepFailed(f"DAG run {run_id} still {state} after {timeout:.0f}s")

    def task_states(self, run_id: str) -> dict:
        resp = self.session.get(f"{self.url}/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances", timeout=30)
        return {ti["task_id"]: ti["state"] for ti in resp.json().get("task_instances", [])}

    def wait_unpaused_idle(self, timeout: float = 600) -> None:
        """max_active_runs=1: let a run the scheduler may have started on its own finish first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            resp = self.session.get(f"{self.url}/api/v2/dags/{DAG_ID}/dagRuns",
                                    params={"state": ["running", "queued"]}, timeout=30)
            if resp.ok and not resp.json().get("dag_runs"):
                return
            time.sleep(3)
        raise StepFailed(f"{DAG_ID} still has an active run after {timeout:.0f}s")


def local_run_count(cfg: StackConfig) -> int:
    runs = cfg.root / "kfp-runs" / "runs"
    return len([p for p in runs.iterdir() if p.is_dir()]) if runs.exists() else 0


def send_shifted(serving: str, n: int = 100) -> None:
    for _ in range(n):
        resp = requests.post(f"{serving}/predict", json={"features": SEED_SHIFTED_SAMPLE}, timeout=30)
        check(resp.status_code == 200, f"/predict answered HTTP {resp.status_code}: {resp.text[:200]}")


def scheduled_run(airflow: Airflow, cfg: StackConfig, submit_state: str, new_runs: int) -> dict:
    """Trigger the path the schedule takes (force=false), wait for it, check what it submitted."""
    runs_before = local_run_count(cfg)
    run_id = airflow.trigger({"force": False})
    state = airflow.wait(run_id)
    states = airflow.task_states(run_id)
    check(state == "success" and states.get("submit_retrain") == submit_state,
          f"run {run_id} ended {state} with tasks {states}")
    submitted = local_run_count(cfg) - runs_before
    check(submitted == new_runs, f"{submitted} pipeline runs submitted, expected {new_runs}")
    return states


def run_e2e(cfg: StackConfig) -> dict:
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

    report.step("100 shifted samples")
    requests.post(f"{serving}/drift/reset", headers=admin, timeout=30)
    send_shifted(serving)
    report.ok("sent")

    report.step("drift detected")
    drift = requests.get(f"{serving}/drift/status", timeout=30).json()
    check(drift.get("drift_detected") is True, f"drift not detected: {drift}")
    report.ok(f"{drift['samples']} samples; drifting features: "
              f"{[k for k, v in drift.get('features', {}).items() if v.get('drift')]}")

    report.step("labelled feedback for the shifted region")
    rng = np.random.default_rng(7)
    rows = (np.array(SEED_SHIFTED_SAMPLE) + rng.normal(0, 0.1, size=(60, 4))).round(2).tolist()
    served = requests.post(f"{serving}/predict", json={"instances": rows}, timeout=30).json()
    predicted = served.get("predictions") or []
    check(len(predicted) == len(rows), f"batch /predict answered {served}")
    # The world says the shifted region is class 0, whatever the champion predicts there (the same
    # label on every run, so that a second `make e2e` on the same stack does not contradict the first).
    labels = [0] * len(rows)
    fb = requests.post(f"{serving}/feedback", json={"instances": rows, "labels": labels, "source": "e2e"},
                       headers=labeller, timeout=30)
    check(fb.status_code in (200, 201), f"/feedback answered HTTP {fb.status_code}: {fb.text[:200]}")
    report.ok(f"{len(rows)} labelled rows stored (labels {sorted(set(labels))}, the champion predicted "
              f"{sorted(set(int(p) for p in predicted))})")

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
    deadline = time.monotonic() + 120
    info = {}
    while time.monotonic() < deadline:
        info = requests.get(f"{serving}/model/info", timeout=30).json()
        if int(info.get("version") or 0) > old_version:
            break
        time.sleep(1)
    check(int(info.get("version") or 0) > old_version, f"still on version {info.get('version')} (was {old_version})")
    forced_seconds = time.monotonic() - t0
    report.timings["forced_trigger_to_new_champion_s"] = round(forced_seconds, 1)
    check(local_run_count(cfg) == runs_before + 1, "the forced DAG run did not submit exactly one pipeline run")
    report.ok(f"version {info['version']} served {forced_seconds:.0f}s after the trigger; one pipeline run")

    report.step("drift window restarted against the new model")
    drift = requests.get(f"{serving}/drift/status", timeout=30).json()
    check(drift.get("samples", 1) == 0 and drift.get("drift_detected") is False,
          f"window not restarted: {drift}")
    check(str(drift.get("model_version")) == str(info["version"]), f"window compares against {drift.get('model_version')}")
    report.ok(f"0 samples, comparing against version {drift.get('model_version')}")

    report.step("scheduled path without drift: nothing submitted")
    report.ok(f"tasks {scheduled_run(airflow, cfg, submit_state='skipped', new_runs=0)}")

    report.step("scheduled path with drift: exactly one run submitted")
    send_shifted(serving)
    report.ok(f"tasks {scheduled_run(airflow, cfg, submit_state='success', new_runs=1)}")

    total = time.monotonic() - report.t0
    start_file = cfg.root / "last-start-seconds"
    if start_file.exists():
        report.timings["make_run_to_healthy_s"] = float(start_file.read_text())
        print(f"make run → healthy took {report.timings['make_run_to_healthy_s']:.0f}s (last start)")
    print(f"\nE2E PASSED: {report.n} steps in {total:.0f}s; forced trigger → new champion served in "
          f"{report.timings['forced_trigger_to_new_champion_s']:.0f}s", flush=True)
    return report.timings


def main(cfg: StackConfig) -> int:
    try:
        run_e2e(cfg)
    except (StepFailed, requests.RequestException, KeyError, ValueError) as exc:
        print(f"\nE2E FAILED: {exc}", flush=True)
        return 1
    return 0
