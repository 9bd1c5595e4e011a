"""deploy_target=kubernetes through the real `kubernetes` client, configured by a kubeconfig file that
points at a stand-in API server (tests/kfp_components/fake_kube.py): check the Deployment, reload the
serving app (the stand-in, or the real app under gunicorn), then patch the pod template and wait for
the rollout."""

from __future__ import annotations

import datetime as dt
import logging
import socket
import uuid

import kubernetes_validate
import pytest
import requests

from kfp_components.steps import deploy as deploy_module
from kfp_components.steps.deploy import deploy
from kfp_components.steps.errors import StepError
from tests.kfp_components.fake_kube import SMP, FakeKubeAPI, FakeServing, deployment_object

TOKEN = "serving-admin-token"


@pytest.fixture
def events():
    """(who, what) of every call to the stand-ins, in order."""
    return []


@pytest.fixture
def kube(tmp_path, monkeypatch, events):
    """`kube(**FakeKubeAPI kwargs)`: a stand-in API server and $KUBECONFIG pointing at it (no in-cluster
    config: KUBERNETES_SERVICE_HOST unset)."""
    servers = []

    def _start(token=None, **kwargs):
        api = FakeKubeAPI(events=events, **kwargs)
        servers.append(api)
        path = tmp_path / f"kubeconfig-{len(servers)}"
        api.kubeconfig(path, **({"token": token} if token else {}))
        monkeypatch.setenv("KUBECONFIG", str(path))
        return api

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setattr(deploy_module, "ROLLOUT_POLL_SECONDS", 0.05)
    yield _start
    for api in servers:
        api.close()


@pytest.fixture
def serving(monkeypatch, events):
    """A serving app serving m version 1 whose registry alias points at version 2."""
    monkeypatch.setenv("SERVING_ADMIN_TOKEN", TOKEN)
    monkeypatch.setattr(deploy_module, "CONSECUTIVE_READS", 2)
    app = FakeServing("m", served="1", champion="2", token=TOKEN, events=events)
    yield app
    app.close()


def _deploy(serving, **kw):
    return deploy(
        "kubernetes",
        "m",
        "2",
        serving_url=serving.url,
        namespace=kw.pop("namespace", "mlops"),
        deployment=kw.pop("deployment", "ml-api"),
        timeout=10,
        rollout_timeout=kw.pop("rollout_timeout", 10),
    )


def test_stand_in_deployment_is_a_valid_api_object():
    """The stand-in's objects pass the apps/v1 OpenAPI schema of Kubernetes 1.35 (strict: no unknown field)."""
    kubernetes_validate.validate(deployment_object(), "1.35.0", strict=True)
    kubernetes_validate.validate(deployment_object(containers=("app", "sidecar"), replicas=3), "1.35.0", strict=True)


def test_reload_then_patch_then_rollout(kube, serving, events, caplog):
    caplog.set_level(logging.INFO, logger="kfp_components.steps.deploy")
    api = kube()
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    assert _deploy(serving) == "deployed"
    # preflight GET, then the reload, then the patch, then GETs until the rollout is complete
    assert events[0] == ("k8s", "GET") and events[1] == ("serving", "POST /model/reload")
    assert [e for e in events[2:] if e[0] == "serving"] == []
    assert events[2] == ("k8s", "PATCH") and set(events[3:]) == {("k8s", "GET")} and len(events[3:]) == 3
    method, path, content_type, body = api.requests[1]
    assert (method, path, content_type) == ("PATCH", "/apis/apps/v1/namespaces/mlops/deployments/ml-api", SMP)
    annotations = body["spec"]["template"]["metadata"]["annotations"]
    assert annotations["driftloop.io/model"] == "m:2"
    restarted = dt.datetime.strptime(annotations["kubectl.kubernetes.io/restartedAt"], "%Y-%m-%dT%H:%M:%SZ")
    assert before <= restarted.replace(tzinfo=dt.UTC) <= dt.datetime.now(dt.UTC)
    assert body["metadata"]["annotations"] == {"kubernetes.io/change-cause": "driftloop deploy m:2"}
    dep = api.deployments[("mlops", "ml-api")]
    assert dep["metadata"]["generation"] == 2 and dep["status"]["observedGeneration"] == 2
    assert dep["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "2"
    assert dep["metadata"]["annotations"]["kubernetes.io/change-cause"] == "driftloop deploy m:2"
    assert dep["spec"]["template"]["metadata"]["labels"]  # the merge kept the rest of the template
    assert serving.served == "2"
    assert "Deployment mlops/ml-api rolled out m:2 (2 of 2 replicas updated, 2 available" in caplog.text


def test_forbidden_patch_names_the_verb_and_resource(kube, serving, events):
    kube(forbid={"patch"})
    with pytest.raises(StepError) as err:
        _deploy(serving)
    message = str(err.value)
    assert "deployment mlops/ml-api: the Kubernetes API refused to patch it (HTTP 403 Forbidden)" in message
    assert "lacks the RBAC verb 'patch' on resource 'deployments' (API group 'apps') in namespace mlops" in message
    assert 'User "system:serviceaccount:kubeflow:pipeline-runner" cannot patch resource "deployments"' in message
    assert "already serves m version 2 (reloaded)" in message
    assert ("serving", "POST /model/reload") in events


def test_forbidden_get_fails_before_the_reload(kube, serving, events):
    kube(forbid={"get"})
    with pytest.raises(StepError, match="lacks the RBAC verb 'get' on resource 'deployments'"):
        _deploy(serving)
    assert events == [("k8s", "GET")] and serving.served == "1"


def test_missing_deployment(kube, serving, events):
    kube()
    with pytest.raises(
        StepError,
        match=r"deployment mlops/ml-apx not found \(HTTP 404 on get\): check the pipeline "
        r"parameters k8s_namespace and k8s_deployment.*"
        r'API said: deployments.apps "ml-apx" not found',
    ):
        _deploy(serving, deployment="ml-apx")
    assert events == [("k8s", "GET")] and serving.served == "1"


def test_deployment_without_the_serving_container(kube, serving, events):
    api = kube(deployments=[deployment_object(containers=("app", "sidecar"))])
    with pytest.raises(
        StepError,
        match=r"deployment mlops/ml-api has no container named 'serving' "
        r"\(containers: app, sidecar\)",
    ):
        _deploy(serving)
    assert [r[0] for r in api.requests] == ["GET"] and serving.served == "1"


def test_rollout_not_complete_within_timeout(kube, serving):
    kube(rollout="stuck")
    with pytest.raises(StepError) as err:
        _deploy(serving, rollout_timeout=1)
    message = str(err.value)
    assert "deployment mlops/ml-api did not finish its rollout of m:2 within 1s" in message
    assert "1 of 2 replicas updated, 2 available, 3 in all; generation 2, observed 2" in message
    assert "kubectl -n mlops rollout status deployment/ml-api" in message
    assert "already serves m version 2 (reloaded)" in message


def test_progress_deadline_exceeded_fails_at_once(kube, serving):
    kube(rollout="deadline")
    with pytest.raises(StepError, match="deployment mlops/ml-api exceeded its progress deadline rolling out m:2"):
        _deploy(serving, rollout_timeout=60)


def test_wrong_credentials(kube, serving):
    kube(token="not-the-token")
    with pytest.raises(StepError, match=r"refused the step's credentials \(HTTP 401\) on get"):
        _deploy(serving)


def test_unreachable_api_server(tmp_path, monkeypatch, serving):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    path = tmp_path / "kubeconfig"
    path.write_text(f"""apiVersion: v1
kind: Config
clusters: [{{name: c, cluster: {{server: "http://127.0.0.1:{port}"}}}}]
users: [{{name: u, user: {{token: t}}}}]
contexts: [{{name: x, context: {{cluster: c, user: u}}}}]
current-context: x
""")
    monkeypatch.setenv("KUBECONFIG", str(path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(StepError, match=f"the Kubernetes API at http://127.0.0.1:{port} is not reachable"):
        _deploy(serving)
    assert serving.served == "1"


def test_real_serving_app_moves_before_the_pods_restart(mlflow_server, kube, tmp_path, monkeypatch):
    """With the serving app under gunicorn: the registry alias alone does not move the served model;
    the step's reload does, before it patches the Deployment."""
    from tests.serving.conftest import ADMIN_TOKEN, start_gunicorn, stop_gunicorn
    from tests.serving.pipeline_like import iris_frame, log_like_pipeline

    name = f"deploy-k8s-{uuid.uuid4().hex[:8]}"
    X, y = iris_frame()
    v1 = log_like_pipeline(mlflow_server, name, X, y, run_tag=f"{name}-v1")
    state = tmp_path / "serving-state"
    state.mkdir()
    srv = start_gunicorn(state, name, mlflow_server, workers=2)
    try:
        v2 = log_like_pipeline(mlflow_server, name, X, y, random_state=7, run_tag=f"{name}-v2")  # alias -> v2
        assert str(srv.get("/model/info").json()["version"]) == v1.version  # the served record, not the alias
        served_at_patch = []
        api = kube(
            on_patch=lambda dep: served_at_patch.append(
                str(requests.get(srv.url + "/model/info", timeout=10).json()["version"])
            )
        )
        monkeypatch.setenv("SERVING_ADMIN_TOKEN", ADMIN_TOKEN)
        assert deploy("kubernetes", name, v2.version, serving_url=srv.url, timeout=60, rollout_timeout=10) == "deployed"
        assert served_at_patch == [v2.version]
        template = api.deployments[("mlops", "ml-api")]["spec"]["template"]["metadata"]["annotations"]
        assert template["driftloop.io/model"] == f"{name}:{v2.version}"
        infos = [srv.get("/model/info").json() for _ in range(8)]
        assert {str(i["version"]) for i in infos} == {v2.version}
        # what the rollout does to a pod: a restarted app comes up with the served record, now version 2
        stop_gunicorn(srv)
        srv = start_gunicorn(state, name, mlflow_server, workers=2)
        assert str(srv.get("/model/info").json()["version"]) == v2.version
    finally:
        stop_gunicorn(srv)
