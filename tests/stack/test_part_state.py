"""How the stack judges and heals its parts, on real processes started here (no stack needed):
a leader killed while a child that ignores SIGTERM lives on in its group, a recycled pid, a health
endpoint that answers "degraded", MLflow down when serving is to start, a part that fails to boot."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from argparse import Namespace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil
import pytest

from stack import heal, health, model_source, start, status, stop
from stack.config import StackConfig
from stack.procs import free_port, group_members, start_process, stop_group
from stack.services import ServiceSpec, serving_state_file

REPO = Path(__file__).resolve().parents[2]

# A leader that forks a child which ignores SIGTERM (like a LocalExecutor worker), then waits.
LEADER_WITH_STUBBORN_CHILD = """
import os, signal, time
if os.fork() == 0:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    open(os.environ["CHILD_READY"], "w").close()
    time.sleep(600)
    os._exit(0)
time.sleep(600)
"""


def _wait_for(predicate, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def output(caplog):
    """What the stack's commands reported so far: the lines `python -m stack` shows on stdout."""
    caplog.set_level(logging.INFO, logger="stack")
    return lambda: "\n".join(caplog.messages)


@pytest.fixture
def cfg(tmp_path):
    return StackConfig(
        root=tmp_path / "stack", mlflow_port=free_port(), serving_port=free_port(), airflow_port=free_port()
    )


@pytest.fixture
def stubborn_part(cfg, tmp_path):
    """A 'triggerer' whose leader has a SIGTERM-ignoring child; its pid file as `make run` writes it."""
    ready = tmp_path / "child-ready"
    proc = start_process(
        [sys.executable, "-c", LEADER_WITH_STUBBORN_CHILD],
        cfg.logs / "airflow-triggerer.log",
        env={"CHILD_READY": str(ready)},
    )
    cfg.pids.mkdir(parents=True, exist_ok=True)
    health.pid_file(cfg, "airflow-triggerer").write_text(str(proc.pid))
    _wait_for(ready.exists, what="the child")
    yield proc
    if group_members(proc.pid):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.poll()


def _triggerer_state(cfg):
    spec = ServiceSpec("airflow-triggerer", ["unused"])
    return health.inspect_part(cfg, spec, None)


def test_a_living_leader_is_running(cfg, stubborn_part):
    state = _triggerer_state(cfg)
    assert state.kind == "running" and state.pid == stubborn_part.pid
    assert state.text == "running, healthy"


def test_a_killed_leader_whose_child_survives_is_dead_with_one_leftover(cfg, stubborn_part):
    os.kill(stubborn_part.pid, signal.SIGKILL)
    # we are its parent and have not collected it yet: a zombie, which is not a living leader
    _wait_for(lambda: psutil.Process(stubborn_part.pid).status() == psutil.STATUS_ZOMBIE, what="the zombie")
    state = _triggerer_state(cfg)
    assert state.kind == "dead"
    assert state.text == f"dead (leader pid {stubborn_part.pid} is a zombie, 1 leftover process in its group)"
    stubborn_part.wait()  # reaped: gone
    state = _triggerer_state(cfg)
    assert state.text == f"dead (leader pid {stubborn_part.pid} gone, 1 leftover process in its group)"


def test_the_leftovers_of_a_dead_part_are_stopped_even_when_they_ignore_sigterm(cfg, stubborn_part):
    os.kill(stubborn_part.pid, signal.SIGKILL)
    stubborn_part.wait()
    child = [p.pid for p in group_members(stubborn_part.pid)]
    assert len(child) == 1
    t0 = time.monotonic()
    heal.stop_dead_part(cfg, _triggerer_state(cfg))
    assert time.monotonic() - t0 < heal.DEAD_GROUP_GRACE + 5
    assert group_members(stubborn_part.pid) == []
    assert not health.pid_file(cfg, "airflow-triggerer").exists()
    assert _triggerer_state(cfg).kind == "stopped"


def test_status_names_the_dead_part_and_exits_1(cfg, stubborn_part, output):
    os.kill(stubborn_part.pid, signal.SIGKILL)
    stubborn_part.wait()
    assert status.status(cfg) == 1
    out = output()
    line = next(text for text in out.splitlines() if text.startswith("airflow-triggerer"))
    assert f"dead (leader pid {stubborn_part.pid} gone, 1 leftover process in its group)" in line
    assert next(text for text in out.splitlines() if text.startswith("mlflow")).endswith("stopped")
    assert "`make run` restarts" in out


def test_a_recycled_pid_is_not_taken_for_the_leader_and_not_stopped(cfg, tmp_path):
    # a live process that does not lead its own group, named by a pid file: not ours
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        cfg.pids.mkdir(parents=True)
        health.pid_file(cfg, "mlflow").write_text(str(stranger.pid))
        state = health.read_leader(cfg, "mlflow")
        assert not state.alive and state.recycled and state.leftovers == 0
        # a group leader younger than the pid file: a recycled pid as well
        leader = start_process([sys.executable, "-c", "import time; time.sleep(600)"], tmp_path / "l.log")
        health.pid_file(cfg, "serving").write_text(str(leader.pid))
        old = time.time() - 3600
        os.utime(health.pid_file(cfg, "serving"), (old, old))
        assert health.read_leader(cfg, "serving").recycled
        assert stop.stop(cfg) == 0
        assert stranger.poll() is None and leader.poll() is None, "stop must not touch someone else's process"
        assert not health.pid_file(cfg, "mlflow").exists()
        stop_group(leader.pid)
    finally:
        stranger.kill()
        stranger.wait()


class _Health(BaseHTTPRequestHandler):
    answer = (200, {"status": "ok"})

    def do_GET(self):
        code, body = self.answer
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def health_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def test_probe_tells_ok_degraded_not_ready_and_silent_apart(health_server):
    url = f"http://127.0.0.1:{health_server.server_address[1]}/health"
    _Health.answer = (200, {"status": "ok"})
    assert health.probe(url) == (True, "")
    _Health.answer = (200, {"status": "degraded", "reason": "the last model load failed"})
    assert health.probe(url) == (False, "HTTP 200, degraded: the last model load failed")
    _Health.answer = (503, {"status": "not ready", "reason": "no model loaded yet"})
    assert health.probe(url) == (False, "HTTP 503, not ready: no model loaded yet")
    _Health.answer = (200, {"metadatabase": {"status": "healthy"}})  # Airflow's shape: no top-level status
    assert health.probe(url) == (True, "")
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    ok, why = health.probe(f"http://127.0.0.1:{port}/health")
    assert not ok and why.startswith(f"no answer at http://127.0.0.1:{port}/health")


def test_waiting_for_an_unreachable_mlflow_ends_in_a_clear_error(cfg, output):
    t0 = time.monotonic()
    with pytest.raises(RuntimeError) as err:
        model_source.wait_for_mlflow(cfg, timeout=2, interval=0.5)
    assert 1.5 < time.monotonic() - t0 < 15
    out = output()
    assert f"MLflow at {cfg.mlflow_tracking_uri} is not reachable (no answer" in out
    assert "waiting up to 2s (start it with `make mlflow` or `make run`)" in out
    assert f"MLflow at {cfg.mlflow_tracking_uri} is still not reachable after 2s" in str(err.value)
    assert "`make mlflow`" in str(err.value)


def test_has_champion_with_mlflow_down_is_a_message_not_a_connection_error(cfg):
    with pytest.raises(RuntimeError, match=f"MLflow at {cfg.mlflow_tracking_uri} did not answer"):
        model_source.has_champion(cfg, {"MLFLOW_TRACKING_USERNAME": "u", "MLFLOW_TRACKING_PASSWORD": "p"})


def _served_before(cfg: StackConfig, version: str, tmp_path: Path, copy: bool) -> None:
    """A state file recording `version` as served (and a verified local copy of it when `copy`)."""
    from serving.model_cache import CopyFiles, ModelCopies
    from serving.store import open_store

    serving_state_file(cfg).parent.mkdir(parents=True, exist_ok=True)
    open_store(f"sqlite:///{serving_state_file(cfg)}", 100).activate(cfg.model_name, version, f"run-{version}")
    if copy:
        (tmp_path / "reference.csv").write_text("a,b\n1,2\n")
        (tmp_path / "model.onnx").write_bytes(b"onnx bytes")
        ModelCopies(serving_state_file(cfg).parent / "models").save(
            cfg.model_name,
            version,
            f"run-{version}",
            ["a", "b"],
            CopyFiles(tmp_path / "reference.csv", "onnx", tmp_path / "model.onnx"),
        )


def test_serving_with_mlflow_down_starts_on_the_local_copy_of_the_version_it_served(cfg, tmp_path, output):
    _served_before(cfg, "3", tmp_path, copy=True)
    t0 = time.monotonic()
    model_source.ensure_model_source(cfg, {})  # no wait, no registry call
    assert time.monotonic() - t0 < 10
    out = output()
    assert f"MLflow at {cfg.mlflow_tracking_uri} is not reachable" in out
    assert f"serving starts on version 3 of {cfg.model_name}, which it served before, from its local copy" in out


def test_serving_with_mlflow_down_and_no_local_copy_waits_for_mlflow(cfg, tmp_path, output, monkeypatch):
    _served_before(cfg, "3", tmp_path, copy=False)
    monkeypatch.setenv("STACK_MLFLOW_WAIT", "1")
    with pytest.raises(RuntimeError, match="is still not reachable after 1s"):
        model_source.ensure_model_source(cfg, {})
    assert "serving needs it (version 3, which it served before, has no local copy); waiting up to 1s" in output()


def _cli_env(cfg: StackConfig, **extra) -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AIRFLOW", "MLFLOW", "SERVING_", "DRIFT_", "GUNICORN_", "PROMETHEUS_", "KFP_"))
    }
    env.update(
        STACK_DIR=str(cfg.root),
        MLFLOW_PORT=str(cfg.mlflow_port),
        SERVING_PORT=str(cfg.serving_port),
        AIRFLOW_PORT=str(cfg.airflow_port),
        **extra,
    )
    return env


def test_run_only_serving_with_mlflow_down_waits_then_fails_without_a_traceback(cfg):
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "stack", "run", "--only", "serving"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=_cli_env(cfg, STACK_MLFLOW_WAIT="3"),
        timeout=120,
    )
    elapsed = time.monotonic() - t0
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert f"MLflow at {cfg.mlflow_tracking_uri} is not reachable" in proc.stdout
    assert "waiting up to 3s (start it with `make mlflow` or `make run`)" in proc.stdout
    assert "is still not reachable after 3s" in proc.stdout and "nothing was started" in proc.stdout
    assert not health.pid_file(cfg, "serving").exists()
    assert elapsed < 60


BAD_APP = """
raise RuntimeError("the serving state file /x/serving.sqlite3 is corrupt: restore it from a backup")
"""


def test_a_part_that_fails_to_boot_is_reported_with_its_log_within_seconds(cfg, tmp_path, monkeypatch, output):
    (tmp_path / "bad_app.py").write_text(BAD_APP)
    spec = ServiceSpec(
        "mlflow",
        [
            str(Path(sys.executable).with_name("gunicorn")),
            "--pythonpath",
            str(tmp_path),
            "--no-control-socket",
            "-b",
            f"127.0.0.1:{cfg.mlflow_port}",
            "-w",
            "1",
            "bad_app:app",
        ],
        {},
        cfg.mlflow_port,
        f"{cfg.mlflow_tracking_uri}/health",
        180,
    )
    monkeypatch.setattr(start, "service_specs", lambda cfg, secrets: [spec])
    # an older start's lines in the same log are not this start's cause
    cfg.logs.mkdir(parents=True)
    (cfg.logs / "mlflow.log").write_text("OLD LINE from a previous start\n")
    t0 = time.monotonic()
    assert start.run(cfg, Namespace(only=None)) == 1
    elapsed = time.monotonic() - t0
    out = output()
    assert elapsed < 30, out
    assert "error: mlflow did not become healthy: process for" in out and "exited with code" in out
    assert "the serving state file /x/serving.sqlite3 is corrupt" in out
    assert "Worker failed to boot" in out
    assert "OLD LINE" not in out
    assert "what this run started was stopped again" in out
    assert not health.pid_file(cfg, "mlflow").exists()


def test_a_component_that_exits_before_its_first_heartbeat_fails_the_wait_at_once(cfg):
    gone = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    gone.wait()
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="airflow-triggerer exited with code 3 before its first heartbeat"):
        start.wait_airflow_components(cfg, {"triggerer": None}, {"airflow-triggerer": gone}, timeout=60)
    assert time.monotonic() - t0 < 5


def test_stragglers_are_found_by_the_stack_marker(cfg):
    from stack.services import STACK_MARKER

    marked = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)"], env={**os.environ, STACK_MARKER: str(cfg.root)}
    )
    other = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)"],
        env={**os.environ, STACK_MARKER: str(cfg.root) + "-other"},
    )
    try:
        _wait_for(lambda: marked.pid in stop.stack_stragglers(cfg), what="the marked process")
        assert other.pid not in stop.stack_stragglers(cfg)
    finally:
        for proc in (marked, other):
            proc.kill()
            proc.wait()


def test_run_only_serving_with_an_empty_state_file_stops_at_once_naming_the_file(cfg):
    state = serving_state_file(cfg)
    state.parent.mkdir(parents=True)
    state.write_bytes(b"")
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "stack", "run", "--only", "serving"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=_cli_env(cfg, STACK_MLFLOW_WAIT="60"),
        timeout=120,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert time.monotonic() - t0 < 20  # no wait for MLflow: waiting would not help
    assert "Traceback" not in proc.stdout + proc.stderr
    assert f"error: serving state file {state} is empty" in proc.stdout
    assert "nothing was started" in proc.stdout
    assert state.read_bytes() == b""


def test_serving_that_fails_to_boot_on_a_damaged_state_file_is_reported_within_seconds(cfg, monkeypatch, output):
    """The real serving command (gunicorn, the project's config) on a damaged state file, without the
    stack's own check of the file: what gunicorn says reaches the user, in seconds."""
    from stack.config import load_or_create_secrets
    from stack.services import service_specs

    real = next(s for s in service_specs(cfg, load_or_create_secrets(cfg)) if s.name == "serving")
    monkeypatch.setattr(start, "service_specs", lambda cfg, secrets: [real])
    monkeypatch.setattr(start, "ensure_model_source", lambda cfg, secrets: None)
    state = serving_state_file(cfg)
    state.parent.mkdir(parents=True)
    state.write_bytes(b"this is not a database" * 100)
    t0 = time.monotonic()
    assert start.run(cfg, Namespace(only=None)) == 1
    elapsed = time.monotonic() - t0
    out = output()
    assert elapsed < 60, out
    assert "error: serving did not become healthy: process for" in out
    assert f"serving state file {state} is not an SQLite database" in out, out
    assert not health.pid_file(cfg, "serving").exists()
    print(f"\nserving start failure reported in {elapsed:.1f}s")


def _bootstrap(cfg: StackConfig, code: str) -> model_source.Bootstrap:
    """A Bootstrap whose 'pipeline' is `code`, run in its own process group as the real one is."""
    cfg.logs.mkdir(parents=True, exist_ok=True)
    log_path, outcome = cfg.logs / "bootstrap-retrain.log", cfg.root / "bootstrap-outcome.json"
    outcome.unlink(missing_ok=True)  # as start_bootstrap does
    proc = start_process([sys.executable, "-c", code, str(outcome)], log_path)
    return model_source.Bootstrap(proc, log_path, outcome, time.monotonic())


def test_a_failed_bootstrap_retrain_stops_the_start_naming_its_error_and_log(cfg):
    failing = (
        "import json, sys; json.dump({'state': 'FAILED', 'error': 'train-model: no data'}, open(sys.argv[1], 'w'));"
        " sys.exit(1)"
    )
    with pytest.raises(RuntimeError, match=r"bootstrap retrain failed \(train-model: no data\); see .*bootstrap"):
        _bootstrap(cfg, failing).finish(cfg, {"SERVING_ADMIN_TOKEN": "t"})
    with pytest.raises(RuntimeError, match=r"bootstrap retrain failed \(exit 3\)"):
        _bootstrap(cfg, "import sys; sys.exit(3)").finish(cfg, {"SERVING_ADMIN_TOKEN": "t"})


def test_a_bootstrap_retrain_that_outlives_its_time_is_stopped_with_its_group(cfg):
    slow = _bootstrap(cfg, "import time; time.sleep(600)")
    with pytest.raises(RuntimeError, match="bootstrap retrain still running after 1s"):
        slow.finish(cfg, {"SERVING_ADMIN_TOKEN": "t"}, timeout=1)
    assert slow.proc.poll() is not None and not group_members(slow.proc.pid)
