"""The steps' MLflow REST client against real MLflow servers: the session's (no auth) and one run as the
embedded stack runs it (basic auth with its login cache), with the MLflow client as the reference."""

from __future__ import annotations

import secrets
import uuid

import pytest

from kfp_components.steps.mlflow_rest import MlflowApiError, MlflowRest, run_metrics, run_tags, tracking_auth
from kfp_components.steps.tracking import connect_rest
from stack.mlflow_server import start_mlflow
from stack.procs import free_port, stop_group

LOGIN_VARS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    """`mlflow server --app-name basic-auth` configured as the stack configures it; yields (url, login)."""
    login = {
        "MLFLOW_TRACKING_USERNAME": "admin",
        "MLFLOW_TRACKING_PASSWORD": secrets.token_urlsafe(24),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_urlsafe(32),
    }
    proc, url = start_mlflow(tmp_path_factory.mktemp("mlflow-auth"), free_port(), auth_secrets=login)
    yield url, login
    stop_group(proc.pid)


@pytest.fixture
def logged_in(auth_server, monkeypatch):
    url, login = auth_server
    for key in LOGIN_VARS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", login["MLFLOW_TRACKING_USERNAME"])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", login["MLFLOW_TRACKING_PASSWORD"])
    return url


def _run_with_artifact(tracking_uri, tmp_path):
    """A run made with the MLflow client: a tag, a metric and an artifact."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.create_experiment(f"rest-{uuid.uuid4().hex[:8]}")
    run = client.create_run(experiment, tags={"feature_names": '["a", "b"]'})
    client.log_metric(run.info.run_id, "accuracy", 0.75)
    payload = tmp_path / "model.onnx"
    payload.write_bytes(bytes(range(256)) * 4)
    client.log_artifact(run.info.run_id, str(payload), "onnx")
    return client, run.info.run_id, payload.read_bytes()


def test_reads_writes_and_downloads_what_the_mlflow_client_sees(mlflow_server, tmp_path, monkeypatch):
    for key in LOGIN_VARS:
        monkeypatch.delenv(key, raising=False)
    client, run_id, payload = _run_with_artifact(mlflow_server, tmp_path)
    api = connect_rest(mlflow_server)
    run = api.get_run(run_id)
    assert run_tags(run)["feature_names"] == '["a", "b"]'
    assert run_metrics(run)["accuracy"] == 0.75

    api.set_tag(run_id, "validation_decision", "accepted")
    api.log_metrics(run_id, {"validation_trusted_accuracy": 0.5, "champion_accuracy": 0.25})
    seen = client.get_run(run_id).data
    assert seen.tags["validation_decision"] == "accepted"
    assert seen.metrics["validation_trusted_accuracy"] == 0.5 and seen.metrics["champion_accuracy"] == 0.25

    path = api.download_run_artifact(run, "onnx/model.onnx", tmp_path / "down")
    assert path.read_bytes() == payload
    with pytest.raises(MlflowApiError, match="artifact onnx/missing.onnx"):
        api.download_run_artifact(run, "onnx/missing.onnx", tmp_path / "down")


def test_a_missing_model_or_alias_is_none_and_other_errors_name_the_call(mlflow_server, mlflow_client):
    api = MlflowRest(mlflow_server)
    name = f"rest-{uuid.uuid4().hex[:8]}"
    assert api.version_by_alias(name, "champion") is None
    mlflow_client.create_registered_model(name)
    assert api.version_by_alias(name, "champion") is None
    with pytest.raises(MlflowApiError, match=r"runs/get failed \(HTTP 404, RESOURCE_DOES_NOT_EXIST\)"):
        api.get_run("0" * 32)


def test_the_stacks_login_is_required_and_checked_every_time(logged_in, auth_server, tmp_path, monkeypatch):
    """The login cache must not let a wrong password in after the right one was cached."""
    url, login = auth_server
    _, run_id, _ = _run_with_artifact(url, tmp_path)
    api = connect_rest(url)
    assert api.get_run(run_id)["info"]["run_id"] == run_id
    assert api.get_run(run_id)["info"]["run_id"] == run_id  # cached login

    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "not-the-password")
    with pytest.raises(MlflowApiError, match="refused runs/get \\(HTTP 401\\)") as wrong:
        MlflowRest(url).get_run(run_id)
    assert wrong.value.status == 401 and "MLFLOW_TRACKING_USERNAME" in str(wrong.value)
    for key in LOGIN_VARS:
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(MlflowApiError, match="HTTP 401"):
        MlflowRest(url).set_tag(run_id, "validation_decision", "accepted")
    assert "validation_decision" not in run_tags(api.get_run(run_id))


def test_credentials_are_read_as_the_mlflow_client_reads_them():
    assert tracking_auth({}) == {}
    assert tracking_auth({"MLFLOW_TRACKING_USERNAME": "u", "MLFLOW_TRACKING_PASSWORD": "p"}) == {"auth": ("u", "p")}
    assert tracking_auth({"MLFLOW_TRACKING_TOKEN": "t", "MLFLOW_TRACKING_USERNAME": "u"}) == {
        "headers": {"Authorization": "Bearer t"}
    }
    assert tracking_auth({"MLFLOW_TRACKING_USERNAME": "u"}) == {}  # no password: no basic auth


def test_a_dead_server_is_named_at_once():
    port = free_port()
    with pytest.raises(Exception, match=f"127.0.0.1:{port} is not reachable"):
        connect_rest(f"http://127.0.0.1:{port}")
    with pytest.raises(MlflowApiError, match=f"MLflow at http://127.0.0.1:{port} did not answer runs/get"):
        MlflowRest(f"http://127.0.0.1:{port}", timeout=2).get_run("x")
