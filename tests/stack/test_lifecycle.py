"""The embedded stack as a user drives it: `make run`, `make status`, `make e2e`, `make stop`,
on free ports in a temporary state directory; plus the failure modes a user meets."""

import json
import os
import signal
import socket
import sqlite3
import subprocess
import time

import pytest
import requests

from stack.e2e import Airflow, send_shifted
from tests.stack_fixture import stack_cmd, stack_env, stack_processes

pytestmark = pytest.mark.stack


def test_port_in_use_starts_nothing(tmp_path):
    env = stack_env(tmp_path / "stack")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        env["SERVING_PORT"] = str(busy.getsockname()[1])
        proc = stack_cmd(env, "run", timeout=120)
    assert proc.returncode == 1
    assert f"port {env['SERVING_PORT']} for serving is already in use" in proc.stdout
    assert "nothing was started" in proc.stdout
    assert not list((tmp_path / "stack" / "pids").glob("*.pid")) if (tmp_path / "stack" / "pids").exists() else True
    assert stack_processes(tmp_path / "stack") == []


def test_stale_pid_file_is_reported_and_cleaned(tmp_path):
    env = stack_env(tmp_path / "stack")
    pids = tmp_path / "stack" / "pids"
    pids.mkdir(parents=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    (pids / "mlflow.pid").write_text(str(dead.pid))
    status = stack_cmd(env, "status", timeout=120)
    assert status.returncode == 1
    assert f"dead (leader pid {dead.pid} gone, 0 leftover processes in its group)" in status.stdout
    stop = stack_cmd(env, "stop", timeout=120)
    assert stop.returncode == 0 and "mlflow: was not running (stale pid file removed)" in stop.stdout
    assert not (pids / "mlflow.pid").exists()


@pytest.mark.timeout(1800)
def test_run_again_status_e2e(embedded_stack):
    root = embedded_stack.root
    assert "==> stack healthy" in embedded_stack.run_output
    assert oct((root / "endpoints.env").stat().st_mode & 0o777) == "0o600"
    assert oct((root / "secrets.env").stat().st_mode & 0o777) == "0o600"

    again = embedded_stack.cmd("run", timeout=300)
    assert again.returncode == 0 and "nothing changed" in again.stdout, again.stdout[-2000:]

    status = embedded_stack.cmd("status", timeout=120)
    assert status.returncode == 0, status.stdout
    assert status.stdout.count("running, healthy") == 6  # three HTTP health checks, three Airflow heartbeats

    # the scheduled path with drift (a third full retrain) is tests/dags' (dag.test(), real local run)
    e2e = embedded_stack.cmd("e2e", "--no-scheduled-retrain", timeout=1500)
    print(e2e.stdout[-6000:])
    assert e2e.returncode == 0, e2e.stdout[-6000:] + e2e.stderr[-3000:]
    assert "E2E PASSED" in e2e.stdout


@pytest.mark.timeout(600)
def test_drift_watcher_state_survives_a_killed_triggerer(embedded_stack):
    """Drift without new labels: the watcher alerts once and starts nothing. Its state lives in Airflow's
    asset state store, so a triggerer killed with SIGKILL and restarted by `make run` resumes it: the
    window it already decided on raises no second alert and starts no run (with the state lost, the
    next look at the same window would decide, and alert, again)."""
    root = embedded_stack.root
    env = embedded_stack.endpoints
    log_file = root / "logs" / "airflow-triggerer.log"
    poll = float(embedded_stack.env["DRIFT_RETRAIN_DRIFT_POLL_INTERVAL"])

    def count(text: str) -> int:
        return log_file.read_text(errors="replace").count(text)

    def wait_for(what: str, more_than: int, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while count(what) <= more_than and time.monotonic() < deadline:
            time.sleep(1)
        assert count(what) > more_than, f"no new {what!r} in {log_file} after {timeout:.0f}s"
        return count(what)

    airflow = Airflow(env["AIRFLOW_URL"], env["AIRFLOW_USER"], env["AIRFLOW_PASSWORD"])
    airflow.wait_unpaused_idle()
    serving = env["SERVING_URL"]
    status = requests.get(f"{serving}/drift/status", timeout=30).json()
    assert status["labelled_rows_since_served"] == 0, status  # make e2e's last retrain came after its labels
    alerts = count("ALERT drift watcher")
    send_shifted(serving)
    alerts = wait_for("ALERT drift watcher", alerts, 4 * poll + 30)
    episode = f"episode {status['model_name']}:{status['model_version']}:{status['window_epoch']}."
    assert episode in log_file.read_text(errors="replace").rsplit("ALERT drift watcher", 1)[1]
    with sqlite3.connect(root / "airflow" / "airflow.db") as db:
        (value,) = db.execute("SELECT value FROM asset_state_store WHERE key = 'drift_episodes'").fetchone()
    state = json.loads(value)
    assert state["blocked"]["episode"] == state["decided"]["episode"], state

    starts = count("Drift watcher started")
    os.kill(int((root / "pids" / "airflow-triggerer.pid").read_text()), signal.SIGKILL)
    healed = embedded_stack.cmd("run", timeout=600)
    assert healed.returncode == 0, healed.stdout[-3000:]
    wait_for("Drift watcher started", starts, 180)
    time.sleep(2 * poll + 5)  # two more looks at the same window
    assert count("ALERT drift watcher") == alerts, log_file.read_text(errors="replace")[-3000:]
    active = airflow.session.get(
        f"{airflow.url}/api/v2/dags/drift_retrain/dagRuns", params={"state": ["running", "queued"]}, timeout=30
    ).json()["dag_runs"]
    assert active == [], active


@pytest.mark.timeout(600)
def test_stop_leaves_nothing_behind(embedded_stack):
    """Runs last in this file: the shared stack is stopped here (the session fixture's stop is then a no-op)."""
    stop = embedded_stack.cmd("stop", timeout=300)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert "stack stopped" in stop.stdout
    assert stack_processes(embedded_stack.root) == []
