"""Deploy targets: argument checks and the rollout test here; deploy_target=kubernetes against the real
`kubernetes` client and a stand-in API server in test_deploy_kubernetes.py."""
import pytest
from kubernetes.client import (V1Deployment, V1DeploymentSpec, V1DeploymentStatus, V1LabelSelector, V1ObjectMeta,
                               V1PodTemplateSpec)

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
    with pytest.raises(StepError, match="serving app at http://127.0.0.1:9 is not reachable"):
        deploy("local", "m", "1", serving_url="http://127.0.0.1:9")


def _deployment(generation, observed, replicas, updated, available):
    return V1Deployment(metadata=V1ObjectMeta(generation=generation),
                        spec=V1DeploymentSpec(replicas=replicas, selector=V1LabelSelector(match_labels={"app": "ml-api"}),
                                                          template=V1PodTemplateSpec()),
                        status=V1DeploymentStatus(observed_generation=observed, replicas=replicas,
                                                  updated_replicas=updated, available_replicas=available))


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
