"""Deploy targets: argument checks and the rollout test here; deploy_target=kubernetes against the real
`kubernetes` client and a stand-in API server in test_deploy_kubernetes.py."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from kubernetes.client import (
    V1Deployment,
    V1DeploymentSpec,
    V1DeploymentStatus,
    V1LabelSelector,
    V1ObjectMeta,
    V1PodTemplateSpec,
)

from kfp_components.steps import deploy as deploy_module
from kfp_components.steps.deploy import deploy, rollout_complete
from kfp_components.steps.errors import StepError


def test_none_target_does_nothing():
    assert deploy("none", "m", "1") == "skipped"


def test_unknown_target_is_named():
    with pytest.raises(StepError, match="deploy_target='docker': unknown; use one of local, kubernetes, none"):
        deploy("docker", "m", "1")


def test_local_needs_url_and_token(monkeypatch):
    monkeypatch.delenv("SERVING_ADMIN_TOKEN", raising=False)
    with pytest.raises(StepError, match="needs serving_url"):
        deploy("local", "m", "1", serving_url="")
    with pytest.raises(StepError, match="SERVING_ADMIN_TOKEN"):
        deploy("local", "m", "1", serving_url="http://127.0.0.1:9")


def test_local_unreachable_serving_app(monkeypatch):
    monkeypatch.setenv("SERVING_ADMIN_TOKEN", "t")
    monkeypatch.setattr(deploy_module, "RELOAD_RETRY_SECONDS", 0.2)
    t0 = time.monotonic()
    with pytest.raises(StepError, match=r"serving app at http://127.0.0.1:9 is not reachable: .* \(for 2s\)"):
        deploy("local", "m", "1", serving_url="http://127.0.0.1:9", timeout=2)
    assert 1.5 < time.monotonic() - t0 < 30  # retried until the deadline, not longer


class _WarmingUpApp(BaseHTTPRequestHandler):
    """A serving app whose pods are not ready yet: 503 for the first reloads, then it serves v7."""

    reloads = 0

    def log_message(self, *args):
        pass

    def _answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        type(self).reloads += 1
        if self.headers.get("Authorization") != "Bearer t":
            return self._answer(401, {"error": "no"})
        if type(self).reloads < 3:
            return self._answer(503, {"error": "model not ready: no version of 'm' has alias 'champion'"})
        return self._answer(200, {"status": "reloaded", "version": "7"})

    def do_GET(self):
        self._answer(200, {"name": "m", "version": "7" if type(self).reloads >= 3 else None})


def test_reload_waits_for_a_serving_app_that_is_not_ready_yet(monkeypatch):
    monkeypatch.setenv("SERVING_ADMIN_TOKEN", "t")
    monkeypatch.setattr(deploy_module, "RELOAD_RETRY_SECONDS", 0.1)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _WarmingUpApp)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        assert deploy("local", "m", "7", serving_url=url, timeout=30) == "deployed"
        assert _WarmingUpApp.reloads == 3
        monkeypatch.setenv("SERVING_ADMIN_TOKEN", "wrong")  # a refused token fails at once, no retries
        with pytest.raises(StepError, match="refused the admin token"):
            deploy("local", "m", "7", serving_url=url, timeout=30)
        assert _WarmingUpApp.reloads == 4
    finally:
        server.shutdown()


def _deployment(generation, observed, replicas, updated, available):
    return V1Deployment(
        metadata=V1ObjectMeta(generation=generation),
        spec=V1DeploymentSpec(
            replicas=replicas, selector=V1LabelSelector(match_labels={"app": "ml-api"}), template=V1PodTemplateSpec()
        ),
        status=V1DeploymentStatus(
            observed_generation=observed, replicas=replicas, updated_replicas=updated, available_replicas=available
        ),
    )


def test_rollout_status_like_kubectl():
    assert rollout_complete(_deployment(2, 2, 3, 3, 3))
    assert not rollout_complete(_deployment(3, 2, 3, 3, 3))  # controller has not seen the patch
    assert not rollout_complete(_deployment(2, 2, 3, 1, 3))  # old pods still serving
    assert not rollout_complete(_deployment(2, 2, 3, 3, 2))  # a new pod is not available yet


def test_kubernetes_without_cluster_config(monkeypatch, tmp_path):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.setenv("SERVING_ADMIN_TOKEN", "t")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(StepError, match="no in-cluster config .* and no kubeconfig"):
        deploy("kubernetes", "m", "1", serving_url="http://127.0.0.1:9")


def test_kubernetes_needs_url_and_token(monkeypatch):
    monkeypatch.delenv("SERVING_ADMIN_TOKEN", raising=False)
    with pytest.raises(StepError, match="deploy_target=kubernetes needs serving_url .*ml-api.mlops.svc.cluster.local"):
        deploy("kubernetes", "m", "1")
    with pytest.raises(StepError, match="deploy_target=kubernetes needs the environment variable SERVING_ADMIN_TOKEN"):
        deploy("kubernetes", "m", "1", serving_url="http://127.0.0.1:9")
