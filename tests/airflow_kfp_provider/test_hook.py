"""KfpHook: configuration from the connection, and the kfp backend through the REAL kfp.Client
(public API only) against a local server speaking the KFP v2beta1 REST API (fake_kfp_server.py)."""

from __future__ import annotations

import json

import pytest
from kfp_test_fixtures import free_port, kfp_conn, set_conn, wait_for

from airflow_kfp_provider.config import KfpConnectionConfig
from airflow_kfp_provider.exceptions import (
    KfpApiError,
    KfpAuthError,
    KfpConfigError,
    KfpRunNotFound,
    KfpTransientError,
)
from airflow_kfp_provider.hooks.kfp import KfpHook


class _Conn:
    def __init__(self, conn_id="kfp_default", host=None, port=None, schema=None, password=None, extra=None):
        self.conn_id, self.host, self.port, self.schema, self.password = conn_id, host, port, schema, password
        self.extra_dejson = extra or {}


def test_backend_defaults_to_local_with_documented_paths(monkeypatch, tmp_path):
    monkeypatch.setenv("KFP_LOCAL_RUNS_DIR", str(tmp_path / "r"))
    cfg = KfpConnectionConfig.from_connection(_Conn(extra={}))
    assert cfg.backend == "local"
    assert cfg.runs_dir == str(tmp_path / "r")
    assert cfg.runner[1:] == ["-m", "airflow_kfp_provider.local_runner"]
    assert cfg.enable_caching is False and cfg.experiment == "Default"


def test_unknown_backend_says_how_to_fix():
    with pytest.raises(KfpConfigError) as err:
        KfpConnectionConfig.from_connection(_Conn(extra={"backend": "argo"}))
    assert "unknown KFP backend 'argo'" in str(err.value) and "local, kfp" in str(err.value)


@pytest.mark.parametrize(
    "host,port,schema,expected",
    [
        ("ml-pipeline.kubeflow", 8888, None, "http://ml-pipeline.kubeflow:8888"),
        ("https://kfp.example.org/pipeline/", None, None, "https://kfp.example.org/pipeline"),
        ("kfp.example.org", 443, "https", "https://kfp.example.org:443"),
        ("http://127.0.0.1:8080", 9999, None, "http://127.0.0.1:8080"),
    ],
)
def test_host_building(host, port, schema, expected):
    cfg = KfpConnectionConfig.from_connection(_Conn(host=host, port=port, schema=schema, extra={"backend": "kfp"}))
    assert cfg.host == expected


def test_auth_selection():
    token = KfpConnectionConfig.from_connection(_Conn(password="t0k", extra={"backend": "kfp"}))
    assert token.token == "t0k"
    sa = KfpConnectionConfig.from_connection(_Conn(extra={"backend": "kfp", "auth": "service_account"}))
    assert sa.token is None and sa.sa_token_path == ""
    path = KfpConnectionConfig.from_connection(_Conn(extra={"backend": "kfp", "sa_token_path": "/t"}))
    assert path.sa_token_path == "/t"


def test_missing_connection_says_which_env_var(monkeypatch):
    monkeypatch.delenv("AIRFLOW_CONN_NOPE_KFP", raising=False)
    with pytest.raises(KfpConfigError, match="AIRFLOW_CONN_NOPE_KFP"):
        _ = KfpHook("nope_kfp").config


def test_kfp_backend_without_host():
    hook = KfpHook(connection=_Conn(extra={"backend": "kfp"}))
    with pytest.raises(KfpConfigError, match="has no host"):
        _ = hook.backend


# -- the kfp backend against the fake API server, through the real kfp.Client ----------------------
def test_submit_get_find_cancel(monkeypatch, kfp_server, tiny_pipeline):
    set_conn(monkeypatch, "kfp_default", kfp_conn(kfp_server, namespace="mlops", service_account="pipeline-runner"))
    hook = KfpHook()
    hook.preflight(str(tiny_pipeline))
    assert hook.find_run_by_name("r-1") is None  # the experiment does not even exist yet: nothing created
    assert kfp_server.experiments == {}
    run = hook.submit_run("r-1", str(tiny_pipeline), {"msg": "hi", "n": 5, "x": 0.25, "flag": True})
    assert run.state == "PENDING" and run.display_name == "r-1" and run.backend == "kfp"
    assert run.url.endswith(f"/#/runs/details/{run.run_id}")

    body = kfp_server.created_runs[0]
    assert body["runtime_config"]["parameters"] == {"msg": "hi", "n": 5, "x": 0.25, "flag": True}
    assert body["service_account"] == "pipeline-runner"
    exp = kfp_server.experiments[body["experiment_id"]]
    assert exp["display_name"] == "airflow-tests" and exp["namespace"] == "mlops"
    tasks = body["pipeline_spec"]["root"]["dag"]["tasks"]
    assert all(t["cachingOptions"].get("enableCache", False) is False for t in tasks.values()), tasks

    found = hook.find_run_by_name("r-1")
    assert found.run_id == run.run_id
    assert hook.find_run_by_name("r-2") is None

    assert hook.get_run(run.run_id).state == "RUNNING"
    hook.cancel_run(run.run_id)
    assert wait_for(lambda: hook.get_run(run.run_id).state == "CANCELED")


def test_failed_run_carries_its_error(monkeypatch, kfp_server, tiny_pipeline):
    set_conn(monkeypatch, "kfp_default", kfp_conn(kfp_server))
    hook = KfpHook()
    run = hook.submit_run("r-f", str(tiny_pipeline), {"msg": "fail"})
    final = wait_for(lambda: (r := hook.get_run(run.run_id)).state == "FAILED" and r)
    assert "task train-model failed" in final.error
    assert final.finished_at is not None


def test_bearer_token_is_sent(monkeypatch, kfp_server):
    kfp_server.token = "s3cret"
    set_conn(monkeypatch, "kfp_default", {**kfp_conn(kfp_server), "password": "s3cret"})
    KfpHook().preflight(None)
    set_conn(monkeypatch, "kfp_default", {**kfp_conn(kfp_server), "password": "wrong"})
    with pytest.raises(KfpAuthError, match="refused the credentials") as err:
        KfpHook().find_run_by_name("x")
    assert isinstance(err.value, KfpApiError)


def test_service_account_token_file(monkeypatch, kfp_server, tmp_path):
    kfp_server.token = "from-volume"
    token_file = tmp_path / "token"
    token_file.write_text("from-volume")
    set_conn(monkeypatch, "kfp_default", kfp_conn(kfp_server, sa_token_path=str(token_file)))
    hook = KfpHook()
    hook.preflight(None)
    assert hook.find_run_by_name("x") is None


def test_unreachable_host_is_transient_and_says_what_to_check(monkeypatch):
    set_conn(
        monkeypatch,
        "kfp_default",
        {"conn_type": "kfp", "host": f"http://127.0.0.1:{free_port()}", "extra": {"backend": "kfp"}},
    )
    with pytest.raises(KfpTransientError) as err:
        KfpHook().preflight(None)
    assert "unreachable" in str(err.value) and "port-forward" in str(err.value)


def test_error_translation(monkeypatch, kfp_server):
    set_conn(monkeypatch, "kfp_default", kfp_conn(kfp_server))
    hook = KfpHook()
    hook.preflight(None)
    with pytest.raises(KfpRunNotFound):
        hook.get_run("no-such-run")
    kfp_server.fail_next(1, 503)
    with pytest.raises(KfpTransientError, match="503"):
        hook.get_run("whatever")


def test_connection_test_button(monkeypatch, kfp_server):
    set_conn(monkeypatch, "kfp_default", kfp_conn(kfp_server))
    ok, msg = KfpHook().test_connection()
    assert ok and kfp_server.url in msg
    set_conn(monkeypatch, "kfp_default", json.dumps({"conn_type": "kfp", "extra": {"backend": "nope"}}))
    ok, msg = KfpHook().test_connection()
    assert not ok and "unknown KFP backend" in msg


def test_local_backend_passes_pipeline_root_and_adopts_a_taken_name(monkeypatch, tmp_path, tiny_pipeline):
    from kfp_test_fixtures import local_conn

    conn = local_conn(tmp_path / "runs")
    conn["extra"]["pipeline_root"] = str(tmp_path / "artifacts")
    set_conn(monkeypatch, "kfp_default", conn)
    hook = KfpHook()
    hook.preflight(str(tiny_pipeline))
    run = hook.submit_run("same-name", str(tiny_pipeline), {"msg": "ok"})
    again = hook.submit_run("same-name", str(tiny_pipeline), {"msg": "ok"})  # lost race: adopt, no 2nd run
    assert again.run_id == run.run_id
    wait_for(lambda: hook.get_run(run.run_id).state == "SUCCEEDED")
    received = json.loads((tmp_path / "runs" / "runs" / run.run_id / "received.json").read_text())
    assert received["pipeline_root"] == str(tmp_path / "artifacts")
    assert received["params"] == {"msg": "ok"}


def test_provider_info_points_at_real_classes():
    import importlib

    from airflow_kfp_provider import get_provider_info

    info = get_provider_info()
    for conn_type in info["connection-types"]:
        module, _, cls = conn_type["hook-class-name"].rpartition(".")
        hook = getattr(importlib.import_module(module), cls)
        assert hook.conn_type == conn_type["connection-type"]
    for kind in ("hooks", "triggers", "operators", "sensors"):
        for entry in info[kind]:
            for module in entry["python-modules"]:
                importlib.import_module(module)
    from airflow.sdk import BaseOperatorLink

    for path in info["extra-links"]:
        module, _, cls = path.rpartition(".")
        assert issubclass(getattr(importlib.import_module(module), cls), BaseOperatorLink)


def test_the_provider_imports_no_project_package():
    """The provider is a reusable library: no import of this project's other packages anywhere in it."""
    import ast
    from pathlib import Path

    import airflow_kfp_provider

    root = Path(airflow_kfp_provider.__file__).parent
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            for name in names:
                assert name.split(".")[0] not in {"driftloop", "kfp_components", "serving", "stack", "k8s"}, (
                    f"{path.relative_to(root)} imports {name}"
                )
        assert "_healthz_api" not in path.read_text(), path  # public kfp.Client API only
