"""The embedded stack as a user drives it: `make run`, `make status`, `make e2e`, `make stop`,
on free ports in a temporary state directory; plus the failure modes a user meets."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from stack.procs import free_port

REPO = Path(__file__).resolve().parents[2]


def stack_cmd(env, *args, timeout=1200):
    return subprocess.run([sys.executable, "-m", "stack", *args], capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=timeout)


def stack_processes(root: Path) -> list[int]:
    needle = f"DRIFTLOOP_STACK_DIR={root}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def stack_env(root: Path) -> dict:
    # The stack must not depend on what the test process carries (mlflow.set_tracking_uri and
    # set_registry_uri write MLFLOW_* variables into the environment of whoever calls them).
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AIRFLOW", "MLFLOW", "SERVING_", "DRIFT_", "GUNICORN_", "PROMETHEUS_", "KFP_"))}
    env.update(STACK_DIR=str(root), MLFLOW_PORT=str(free_port()), SERVING_PORT=str(free_port()),
               AIRFLOW_PORT=str(free_port()))
    return env


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
    assert status.returncode == 1 and "crashed (stale pid file" in status.stdout
    stop = stack_cmd(env, "stop", timeout=120)
    assert stop.returncode == 0 and "mlflow: was not running (stale pid file removed)" in stop.stdout
    assert not (pids / "mlflow.pid").exists()


@pytest.mark.timeout(1800)
def test_run_e2e_stop_leaves_nothing_behind(tmp_path):
    root = tmp_path / "stack"
    env = stack_env(root)
    try:
        run = stack_cmd(env, "run")
        assert run.returncode == 0, run.stdout[-15000:] + run.stderr[-3000:]
        assert "==> stack healthy" in run.stdout
        assert oct((root / "endpoints.env").stat().st_mode & 0o777) == "0o600"

        again = stack_cmd(env, "run", timeout=300)
        assert again.returncode == 0 and "nothing changed" in again.stdout, again.stdout[-2000:]

        status = stack_cmd(env, "status", timeout=120)
        assert status.returncode == 0, status.stdout
        assert status.stdout.count("running, healthy") == 3

        e2e = stack_cmd(env, "e2e", timeout=1500)
        print(e2e.stdout[-6000:])
        assert e2e.returncode == 0, e2e.stdout[-6000:] + e2e.stderr[-3000:]
        assert "E2E PASSED" in e2e.stdout
    finally:
        stop = stack_cmd(env, "stop", timeout=300)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert stack_processes(root) == []
