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


@pytest.fixture(autouse=True)
def _isolate_mlflow_globals():
    """mlflow.set_tracking_uri/set_registry_uri (called by in-process step functions) change process
    globals and write MLFLOW_* variables into os.environ, which every later test and every process a
    later test starts would inherit. Put both back after each test."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    import sys

    registry_utils = sys.modules.get("mlflow.tracking._model_registry.utils")
    if registry_utils is not None and hasattr(registry_utils, "_registry_uri"):
        registry_utils._registry_uri = None
    tracking_utils = sys.modules.get("mlflow.tracking._tracking_service.utils")
    if tracking_utils is not None and hasattr(tracking_utils, "_tracking_uri"):
        tracking_utils._tracking_uri = None


@pytest.fixture(scope="session")
def embedded_stack(tmp_path_factory):
    """The whole embedded stack, started once (`python -m stack run`) and stopped after the session."""
    from tests.stack_fixture import RunningStack, stack_cmd, stack_env

    root = tmp_path_factory.mktemp("embedded") / "stack"
    env = stack_env(root)
    run = stack_cmd(env, "run")
    stack = RunningStack(root, env, run.stdout)
    try:
        if run.returncode != 0:
            pytest.fail("make run failed:\n" + run.stdout[-15000:] + run.stderr[-3000:])
        yield stack
    finally:
        stack_cmd(env, "stop", timeout=300)


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server (Debian's initdb/pg_ctl) in a temporary directory, for the session."""
    from stack.local_postgres import start_local_postgres

    server = start_local_postgres()
    yield server
    server.destroy()


@pytest.fixture
def postgres_url(postgres_server, request):
    """A new, empty database on the session's server; its libpq URL."""
    import re
    import uuid

    name = re.sub(r"[^a-z0-9_]", "_", request.node.name.lower())[:40] + "_" + uuid.uuid4().hex[:8]
    return postgres_server.create_database(name)
