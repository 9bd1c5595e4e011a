"""Fixtures shared by tests/airflow_kfp_provider and tests/dags (imported by both conftest files)."""

from __future__ import annotations

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import airflow_testenv
import pytest
from fake_kfp_server import FakeKfpServer

HERE = Path(__file__).resolve().parent
FAKE_RUNNER = HERE / "fake_run_local.py"
TINY_RUNNER = HERE / "tiny_run_local.py"
REPO = airflow_testenv.REPO


def set_conn(monkeypatch, conn_id: str, conn: dict | str) -> None:
    value = conn if isinstance(conn, str) else json.dumps(conn)
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", value)


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


@pytest.fixture(scope="session")
def airflow_db():
    airflow_testenv.init_db()


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory) -> Path:
    """A tiny compiled pipeline (one component) with parameters of every scalar type and a run_tag."""
    from tiny_pipeline_def import compile_to

    path = tmp_path_factory.mktemp("pipeline") / "tiny_pipeline.yaml"
    compile_to(path)
    return path


@pytest.fixture(scope="session")
def kfp_server_session():
    server = FakeKfpServer()
    yield server
    server.close()


@pytest.fixture
def kfp_server(kfp_server_session) -> FakeKfpServer:
    kfp_server_session.reset()
    kfp_server_session.token = None
    return kfp_server_session


def local_conn(runs_dir: Path, runner=None) -> dict:
    return {
        "conn_type": "kfp",
        "extra": {
            "backend": "local",
            "runs_dir": str(runs_dir),
            "runner": runner or [sys.executable, str(FAKE_RUNNER)],
        },
    }


def kfp_conn(server: FakeKfpServer, **extra) -> dict:
    return {"conn_type": "kfp", "host": server.url, "extra": {"backend": "kfp", "experiment": "airflow-tests", **extra}}


class BackendHarness:
    """One backend configured as connection kfp_default, with a way to count what was submitted."""

    def __init__(self, name: str, conn: dict, server: FakeKfpServer | None, runs_dir: Path | None):
        self.name, self.conn, self.server, self.runs_dir = name, conn, server, runs_dir

    def submitted(self) -> list[dict]:
        if self.server is not None:
            return list(self.server.created_runs)
        from airflow_kfp_provider.local_runs import LocalRunStore

        return LocalRunStore(self.runs_dir).list_runs()


@pytest.fixture(params=["local", "kfp"])
def backend(request, monkeypatch, tmp_path, kfp_server) -> BackendHarness:
    if request.param == "local":
        runs_dir = tmp_path / "runs"
        harness = BackendHarness("local", local_conn(runs_dir), None, runs_dir)
    else:
        harness = BackendHarness("kfp", kfp_conn(kfp_server), kfp_server, None)
    set_conn(monkeypatch, "kfp_default", harness.conn)
    return harness


# -- a stand-in for the serving app's HTTP API ---------------------------------------------------
class FakeServing:
    def __init__(self):
        self.drift: dict = {"drift_detected": False, "reason": "Collecting samples (3/100)", "samples": 3}
        self.drift_status = 200
        self.model_info: dict = {"name": "iris-model", "version": "6", "alias": "champion"}
        self.requests: list[str] = []
        state = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                state.requests.append(self.path)
                if self.path.startswith("/drift/status"):
                    body, status = state.drift, state.drift_status
                elif self.path.startswith("/model/info"):
                    body, status = state.model_info, 200
                elif self.path.startswith("/health"):
                    body, status = {"status": "ok"}, 200
                else:
                    body, status = {"error": "not found"}, 404
                data = (body if isinstance(body, str) else json.dumps(body)).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def set_drift(self, detected: bool) -> None:
        if detected:
            self.drift = {
                "drift_detected": True,
                "threshold": 0.05,
                "samples": 100,
                "correction": "bonferroni",
                "features": {
                    "petal_length": {"ks_stat": 0.61, "p_value": 0.0001, "drift": True},
                    "sepal_width": {"ks_stat": 0.08, "p_value": 0.9, "drift": False},
                },
            }
        else:
            self.drift = {
                "drift_detected": False,
                "threshold": 0.05,
                "samples": 100,
                "correction": "bonferroni",
                "features": {"petal_length": {"ks_stat": 0.05, "p_value": 0.8, "drift": False}},
            }

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serving(monkeypatch):
    app = FakeServing()
    set_conn(monkeypatch, "serving_default", app.url)
    yield app
    app.close()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
