"""Parts of the running embedded stack killed with SIGKILL, as a crash or the OOM killer would: `make
status` names the dead part (not "running" because orphans keep its process group alive) and exits 1,
and `make run` stops what is left of that part, starts it alone and leaves the other parts (their
pids) and the serving state (the drift window) as they were. Each test leaves the shared stack
healthy (test_lifecycle.py, which sorts after this module, stops it)."""

from __future__ import annotations

import os
import re
import signal
import socket
import time

import psutil
import pytest
import requests

from stack.procs import group_members, leader_state, stop_group
from stack.services import SERVICE_NAMES
from tests.stack_fixture import stack_cmd

pytestmark = pytest.mark.faults

DEAD = re.compile(r"dead \(leader pid (\d+) (?:gone|is a zombie), (\d+) leftover process(?:es)? in its group\)")
HEAL_BUDGET = 150  # seconds for `make run` to bring one part back (measured: 10-35 s)


def leaders(root) -> dict[str, int]:
    return {p.stem: int(p.read_text()) for p in (root / "pids").glob("*.pid")}


def status_lines(stdout: str) -> dict[str, str]:
    return {line.split()[0]: line for line in stdout.splitlines() if line.split() and line.split()[0] in SERVICE_NAMES}


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture
def stack(embedded_stack):
    """The shared stack, healed again after the test whatever happened in it."""
    yield embedded_stack
    if embedded_stack.cmd("status", timeout=120).returncode != 0:
        embedded_stack.cmd("run", timeout=900)


def kill_and_heal(stack, name: str) -> tuple[int, int, float, str]:
    """SIGKILL the part's leader; check status names it dead and everything else healthy; run; check
    only that part was restarted. Returns (old leader pid, leftovers status counted, heal seconds,
    the run's output)."""
    before = leaders(stack.root)
    leader = before[name]
    os.kill(leader, signal.SIGKILL)
    wait_until(lambda: not leader_state(leader).alive, 10, f"{name}'s leader to die")

    status = stack.cmd("status", timeout=120)
    assert status.returncode == 1, status.stdout
    lines = status_lines(status.stdout)
    match = DEAD.search(lines[name])
    assert match and int(match[1]) == leader, status.stdout
    for other in set(SERVICE_NAMES) - {name}:
        assert "running, healthy" in lines[other], status.stdout

    t0 = time.monotonic()
    run = stack.cmd("run", timeout=900)
    heal = time.monotonic() - t0
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    assert f"{name}: dead (leader pid {leader}" in run.stdout
    assert f"restarted: {name}; the other parts kept running" in run.stdout, run.stdout
    after = leaders(stack.root)
    assert after[name] != leader
    assert {n: p for n, p in after.items() if n != name} == {n: p for n, p in before.items() if n != name}
    assert group_members(leader) == [], "processes of the dead part's group are left"
    assert heal < HEAL_BUDGET, run.stdout

    status = stack.cmd("status", timeout=120)
    assert status.returncode == 0, status.stdout
    assert status.stdout.count("running, healthy") == len(SERVICE_NAMES)
    print(f"\nHEAL {name}: {heal:.1f}s, {match[2]} leftover process(es) of the dead leader's group stopped")
    return leader, int(match[2]), heal, run.stdout


@pytest.mark.timeout(1200)
@pytest.mark.parametrize("name", ["airflow-triggerer", "airflow-scheduler"])
def test_a_killed_airflow_component_is_seen_dead_and_healed_alone(stack, name):
    leader = leaders(stack.root)[name]
    # the LocalExecutor workers of the scheduler: they outlive it and ignore SIGTERM
    children = len(psutil.Process(leader).children())
    _, leftovers, _, run = kill_and_heal(stack, name)
    if name == "airflow-scheduler":
        assert leftovers >= 1 and children >= 1, "expected the scheduler's LocalExecutor workers to outlive it"
    # the restarted component has a heartbeat of its own (not the dead job's, fresh for another 30 s)
    assert "airflow: all components healthy" in run
    health = requests.get(f"{stack.endpoints['AIRFLOW_URL']}/api/v2/monitor/health", timeout=30).json()
    assert {
        part: health[part]["status"] for part in ("metadatabase", "scheduler", "triggerer", "dag_processor")
    } == dict.fromkeys(("metadatabase", "scheduler", "triggerer", "dag_processor"), "healthy"), health


@pytest.mark.timeout(1200)
def test_a_killed_gunicorn_master_restarts_serving_alone_and_keeps_the_drift_window(stack):
    serving = stack.endpoints["SERVING_URL"]
    rows = [[5.1, 3.5, 1.4, 0.2], [6.2, 2.9, 4.3, 1.3], [7.7, 3.0, 6.1, 2.3]]
    for _ in range(3):
        resp = requests.post(f"{serving}/predict", json={"instances": rows}, timeout=30)
        assert resp.status_code == 200, resp.text[:300]
    window = requests.get(f"{serving}/drift/status", timeout=30).json()
    assert window["samples"] >= min(9, window["window_size"])
    master = leaders(stack.root)["serving"]
    workers = [c.pid for c in psutil.Process(master).children()]
    assert workers

    _, leftovers, _, _ = kill_and_heal(stack, "serving")

    assert all(not psutil.pid_exists(w) or psutil.Process(w).status() == psutil.STATUS_ZOMBIE for w in workers)
    after = requests.get(f"{serving}/drift/status", timeout=30).json()
    assert (after["samples"], after["window_started_at"], after["model_version"]) == (
        window["samples"],
        window["window_started_at"],
        window["model_version"],
    ), (window, after)
    resp = requests.post(f"{serving}/predict", json={"instances": rows}, timeout=30)
    assert resp.status_code == 200, resp.text[:300]
    assert requests.get(f"{serving}/health", timeout=30).json()["status"] == "ok"


@pytest.mark.timeout(1200)
def test_a_hung_dag_processor_with_a_stale_heartbeat_is_restarted(stack):
    """SIGSTOP: the leader lives but sends no heartbeat. Airflow counts it as dead after 30 s, so
    status does too, and `make run` restarts it (a component younger than HEARTBEAT_GRACE is given
    time for its first heartbeat instead)."""
    from stack.heal import HEARTBEAT_GRACE

    name = "airflow-dag-processor"
    before = leaders(stack.root)
    leader = before[name]
    airflow = stack.endpoints["AIRFLOW_URL"]
    wait_until(
        lambda: time.time() - psutil.Process(leader).create_time() > HEARTBEAT_GRACE,
        HEARTBEAT_GRACE,
        "the dag-processor to be older than HEARTBEAT_GRACE",
    )
    os.kill(leader, signal.SIGSTOP)
    try:

        def dag_processor_status() -> str:
            return requests.get(f"{airflow}/api/v2/monitor/health", timeout=30).json()["dag_processor"]["status"]

        wait_until(
            lambda: dag_processor_status() == "unhealthy",
            120,
            "Airflow to count the stopped dag-processor as unhealthy",
        )
        status = stack.cmd("status", timeout=120)
        assert status.returncode == 1, status.stdout
        assert re.search(
            r"running, NOT healthy \(Airflow says unhealthy, last heartbeat \d+s ago\)",
            status_lines(status.stdout)[name],
        ), status.stdout

        t0 = time.monotonic()
        run = stack.cmd("run", timeout=900)
        heal = time.monotonic() - t0
    finally:
        if psutil.pid_exists(leader):
            os.kill(leader, signal.SIGCONT)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    assert f"{name}: runs (pid {leader}) but Airflow says unhealthy" in run.stdout
    assert f"restarted: {name}; the other parts kept running" in run.stdout
    after = leaders(stack.root)
    assert after[name] != leader and group_members(leader) == []
    assert {n: p for n, p in after.items() if n != name} == {n: p for n, p in before.items() if n != name}
    assert stack.cmd("status", timeout=120).returncode == 0
    print(f"\nHEAL {name} (hung, stale heartbeat): {heal:.1f}s")


@pytest.mark.timeout(1200)
def test_serving_started_while_mlflow_is_down_serves_the_local_copy_of_its_version(stack):
    """`run --only serving` while MLflow cannot be reached (serving is pointed at a closed port; the
    shared MLflow keeps running): no crash, no wait, serving starts on the version it served before
    from its local copy and keeps its window. Then serving is restarted against the real MLflow."""
    serving = stack.endpoints["SERVING_URL"]
    version = requests.get(f"{serving}/model/info", timeout=30).json()["version"]
    window = requests.get(f"{serving}/drift/status", timeout=30).json()
    with socket.socket() as closed:  # bound, never listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        env = {**stack.env, "MLFLOW_PORT": str(closed.getsockname()[1]), "STACK_MLFLOW_WAIT": "5"}
        try:
            stop_group(leaders(stack.root)["serving"])
            t0 = time.monotonic()
            run = stack_cmd(env, "run", "--only", "serving", timeout=600)
            elapsed = time.monotonic() - t0
            assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
            assert "Traceback" not in run.stdout + run.stderr
            assert f"MLflow at http://127.0.0.1:{env['MLFLOW_PORT']} is not reachable" in run.stdout
            assert (
                f"serving starts on version {version} of iris-model, which it served before, from its local copy"
                in run.stdout
            )
            assert requests.get(f"{serving}/model/info", timeout=30).json()["version"] == version
            resp = requests.post(f"{serving}/predict", json={"instances": [[5.1, 3.5, 1.4, 0.2]]}, timeout=30)
            assert resp.status_code == 200, resp.text[:300]
            after = requests.get(f"{serving}/drift/status", timeout=30).json()
            assert after["window_started_at"] == window["window_started_at"]
            assert after["samples"] == min(window["samples"] + 1, window["window_size"])
            print(f"\nserving started with MLflow down in {elapsed:.1f}s")
        finally:
            stop_group(leaders(stack.root)["serving"])
            healed = stack.cmd("run", timeout=900)  # serving back on the real MLflow, endpoints.env rewritten
    assert healed.returncode == 0, healed.stdout[-6000:]
    assert requests.get(f"{serving}/health", timeout=30).json()["status"] == "ok"
