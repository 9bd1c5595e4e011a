"""The embedded stack as a user drives it: `make run`, `make status`, `make e2e`, `make stop`,
on free ports in a temporary state directory; plus the failure modes a user meets."""

import socket
import subprocess

import pytest

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

    e2e = embedded_stack.cmd("e2e", timeout=1500)
    print(e2e.stdout[-6000:])
    assert e2e.returncode == 0, e2e.stdout[-6000:] + e2e.stderr[-3000:]
    assert "E2E PASSED" in e2e.stdout


@pytest.mark.timeout(600)
def test_stop_leaves_nothing_behind(embedded_stack):
    """Runs last in this file: the shared stack is stopped here (the session fixture's stop is then a no-op)."""
    stop = embedded_stack.cmd("stop", timeout=300)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert "stack stopped" in stop.stdout
    assert stack_processes(embedded_stack.root) == []
