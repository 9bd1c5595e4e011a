"""tests/dags share the Airflow test environment of tests/airflow_kfp_provider (AIRFLOW_HOME, DB)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_HELPERS = Path(__file__).resolve().parents[1] / "airflow_kfp_provider"


def _load(name: str):
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, _HELPERS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


airflow_testenv = _load("airflow_testenv")  # before anything imports airflow
for _path in (_HELPERS, Path(__file__).resolve().parent):  # shared helpers, and drift_docs.py here
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import pytest  # noqa: E402
from kfp_test_fixtures import *  # noqa: E402,F401,F403  (shared: fake servers, runner, tiny pipeline)


@pytest.fixture
def stack(airflow_db, monkeypatch, tmp_path, serving):
    """Stand-in serving app + local backend (stand-in runner) as the DAG's connections, for dag.test()."""
    from kfp_test_fixtures import FAKE_RUNNER, free_port, local_conn, set_conn

    runs_dir = tmp_path / "runs"
    set_conn(monkeypatch, "kfp_default", local_conn(runs_dir, runner=[sys.executable, str(FAKE_RUNNER)]))
    monkeypatch.setenv("FAKE_RUNNER_MODE", "")
    # no MLflow server here: the submit task's MLflow bookkeeping fails fast (a warning, by design)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    serving.runs_dir = runs_dir
    return serving
