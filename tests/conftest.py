"""Session-wide fixtures: one real MLflow tracking server for the whole test run."""
from __future__ import annotations

import os

import pytest

from stack.mlflow_server import start_mlflow
from stack.procs import free_port, stop_group


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` (SQLite + local artifacts) in a temporary directory; yields its URL.

    Tests that need isolation use their own registered model names rather than their own server:
    a server takes tens of seconds to start on this machine.
    """
    state = tmp_path_factory.mktemp("mlflow")
    proc, url = start_mlflow(state, free_port())
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = url
    yield url
    if old is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = old
    stop_group(proc.pid)
