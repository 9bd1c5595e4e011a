"""Fixtures of the serving tests: models logged the way the pipeline logs them, and real gunicorn servers.

Each test module registers its own model name (the MLflow server is shared by the whole session).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests

from stack.procs import free_port, start_process, stop_group, wait_http_ok
from tests.serving.pipeline_like import IRIS_FEATURES, iris_frame, log_like_pipeline

REPO = Path(__file__).resolve().parents[2]
GUNICORN_CONF = REPO / "serving" / "gunicorn.conf.py"
ADMIN_TOKEN = "test-admin-token"
FEEDBACK_TOKEN = "test-feedback-token"


def unique_model_name(request) -> str:
    return f"{request.module.__name__.rsplit('.', 1)[-1]}-{uuid.uuid4().hex[:8]}"


def shifted_iris(n: int, seed: int, shift: float = 0.5, jitter: float = 0.02) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap rows of iris with small jitter and petal length moved by `shift` cm; with labels."""
    X, y = iris_frame()
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(X), n)
    rows = X.to_numpy()[idx] + rng.normal(0.0, jitter, (n, X.shape[1]))
    rows[:, 2] += shift
    return np.round(rows, 3), y.to_numpy()[idx]


@pytest.fixture(scope="session")
def iris():
    return iris_frame()


@pytest.fixture(scope="module")
def model_name(request):
    return unique_model_name(request)


@pytest.fixture(scope="module")
def champion(mlflow_server, model_name, iris):
    """Version 1 of this module's model (with a verified ONNX artifact), alias champion."""
    X, y = iris
    return log_like_pipeline(mlflow_server, model_name, X, y, run_tag=f"{model_name}-v1")


@dataclass
class Server:
    url: str
    proc: object
    env: dict
    log_path: Path

    def get(self, path: str, **kw):
        return requests.get(self.url + path, timeout=30, **kw)

    def post(self, path: str, **kw):
        return requests.post(self.url + path, timeout=60, **kw)

    def admin(self, path: str, method: str = "post", **kw):
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}", **kw.pop("headers", {})}
        return getattr(self, method)(path, headers=headers, **kw)

    def labeller(self, path: str = "/feedback", **kw):
        """POST with the feedback token, as a labelling service does."""
        headers = {"Authorization": f"Bearer {FEEDBACK_TOKEN}", **kw.pop("headers", {})}
        return self.post(path, headers=headers, **kw)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def launch_gunicorn(
    state_dir: Path,
    model_name: str,
    mlflow_tracking_uri: str,
    workers: int = 2,
    extra_env: dict | None = None,
    app: str = "serving.app:create_app()",
) -> Server:
    """`gunicorn -c serving/gunicorn.conf.py 'serving.app:create_app()'` on 127.0.0.1, as users start it;
    not waited for (a test of a failing boot watches the process itself)."""
    port = free_port()
    env = {
        "MLFLOW_TRACKING_URI": mlflow_tracking_uri,
        "MODEL_NAME": model_name,
        "SERVING_STATE_DIR": str(state_dir),
        "SERVING_PORT": str(port),
        "SERVING_HOST": "127.0.0.1",
        "SERVING_ADMIN_TOKEN": ADMIN_TOKEN,
        "SERVING_FEEDBACK_TOKEN": FEEDBACK_TOKEN,
        "GUNICORN_WORKERS": str(workers),
        "PROMETHEUS_MULTIPROC_DIR": str(state_dir / "prometheus"),
        **(extra_env or {}),
    }
    env.pop("GUNICORN_BIND", None)
    log_path = state_dir / f"gunicorn-{port}.log"
    cmd = [str(REPO / ".venv" / "bin" / "gunicorn"), "-c", str(GUNICORN_CONF), app]
    if not Path(cmd[0]).exists():
        import sys

        cmd[0] = str(Path(sys.executable).with_name("gunicorn"))
    proc = start_process(cmd, log_path, env=env, cwd=REPO)
    return Server(f"http://127.0.0.1:{port}", proc, env, log_path)


def start_gunicorn(
    state_dir: Path,
    model_name: str,
    mlflow_tracking_uri: str,
    workers: int = 2,
    extra_env: dict | None = None,
    wait_ready: bool = True,
    timeout: float = 180.0,
) -> Server:
    """launch_gunicorn, then wait until it answers /health (ready) or /health/live (wait_ready=False)."""
    server = launch_gunicorn(state_dir, model_name, mlflow_tracking_uri, workers, extra_env)
    try:
        wait_http_ok(server.url + ("/health" if wait_ready else "/health/live"), timeout=timeout, proc=server.proc)
    except Exception:
        stop_group(server.proc.pid)
        raise RuntimeError(f"gunicorn did not come up:\n{server.log_text()[-4000:]}") from None
    return server


def stop_gunicorn(server: Server) -> None:
    stop_group(server.proc.pid)
    try:
        server.proc.wait(timeout=10)
    except Exception:  # noqa: BLE001
        pass


def as_frame(rows: np.ndarray, labels: np.ndarray) -> tuple[pd.DataFrame, pd.Series]:
    return pd.DataFrame(rows, columns=IRIS_FEATURES), pd.Series(labels, name="target")


@pytest.fixture(scope="module")
def app_state_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("serving-state")


def make_app(mlflow_tracking_uri: str, model_name: str, state_dir: Path, **overrides):
    from serving.app import create_app

    config = {
        "MLFLOW_TRACKING_URI": mlflow_tracking_uri,
        "MODEL_NAME": model_name,
        "SERVING_STATE_DIR": str(state_dir),
        "SERVING_ADMIN_TOKEN": ADMIN_TOKEN,
        "SERVING_FEEDBACK_TOKEN": FEEDBACK_TOKEN,
        **overrides,
    }
    return create_app(config)
