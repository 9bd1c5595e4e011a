"""Rolling the new champion out: `local` asks the serving app to reload and waits until it serves
the version; `kubernetes` rolls the serving Deployment and waits for the rollout; `none` does
nothing (a model no serving app serves yet)."""
from __future__ import annotations

import datetime as dt
import os
import time

import requests

from kfp_components.steps.errors import StepError

DEPLOY_TARGETS = ("local", "kubernetes", "none")
# Several workers answer /model/info: require this many consecutive reads of the new version.
CONSECUTIVE_READS = 6


def deploy(target: str, model_name: str, version: str, serving_url: str = "", namespace: str = "mlops",
           deployment: str = "ml-api", timeout: float = 120.0) -> str:
    if target == "none":
        print(f"deploy_target=none: {model_name} version {version} registered, not deployed")
        return "skipped"
    if target == "local":
        return reload_serving_app(serving_url, model_name, version, os.environ.get("SERVING_ADMIN_TOKEN", ""), timeout)
    if target == "kubernetes":
        return rollout_deployment(namespace, deployment, model_name, version, timeout)
    raise StepError(f"deploy_target={target!r}: unknown; use one of {', '.join(DEPLOY_TARGETS)}")


def reload_serving_app(serving_url: str, model_name: str, version: str, token: str, timeout: float) -> str:
    if not serving_url:
        raise StepError("deploy_target=local needs serving_url (the serving app's base URL)")
    if not token:
        raise StepError("deploy_target=local needs the environment variable SERVING_ADMIN_TOKEN (the serving app's admin token)")
    base = serving_url.rstrip("/")
    try:
        resp = requests.post(f"{base}/model/reload", headers={"Authorization": f"Bearer {token}"}, timeout=60)
    except requests.RequestException as exc:
        raise StepError(f"serving app at {base} is not reachable: {exc}") from exc
    if resp.status_code in (401, 403):
        raise StepError(f"serving app at {base} refused the admin token (HTTP {resp.status_code}); check SERVING_ADMIN_TOKEN")
    if resp.status_code != 200:
        raise StepError(f"serving app at {base} could not reload: HTTP {resp.status_code}: {resp.text[:300]}")
    deadline = time.monotonic() + timeout
    seen, consecutive = None, 0
    while time.monotonic() < deadline:
        try:
            info = requests.get(f"{base}/model/info", timeout=10).json()
            seen = (info.get("name"), str(info.get("version")))
        except (requests.RequestException, ValueError) as exc:
            seen = f"error: {exc}"
        consecutive = consecutive + 1 if seen == (model_name, str(version)) else 0
        if consecutive >= CONSECUTIVE_READS:
            print(f"Serving app at {base} serves {model_name} version {version}")
            return "deployed"
        time.sleep(0.5)
    raise StepError(f"serving app at {base} did not move to {model_name} version {version} within {timeout:.0f}s (last seen {seen})")


def rollout_deployment(namespace: str, deployment: str, model_name: str, version: str, timeout: float) -> str:
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    try:
        config.load_incluster_config()
    except ConfigException:
        try:
            config.load_kube_config()
        except (ConfigException, FileNotFoundError) as exc:
            raise StepError(f"deploy_target=kubernetes: no in-cluster config and no kubeconfig: {exc}") from exc
    apps = client.AppsV1Api()
    patch = {"spec": {"template": {"metadata": {"annotations": {
        "driftloop.io/model": f"{model_name}:{version}",
        "kubectl.kubernetes.io/restartedAt": dt.datetime.now(dt.timezone.utc).isoformat(),
    }}}}}
    try:
        apps.patch_namespaced_deployment(name=deployment, namespace=namespace, body=patch)
    except client.ApiException as exc:
        raise StepError(f"deployment {namespace}/{deployment}: patch failed: HTTP {exc.status} {exc.reason}") from exc
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dep = apps.read_namespaced_deployment(name=deployment, namespace=namespace)
        if rollout_complete(dep):
            print(f"Deployment {namespace}/{deployment} rolled out {model_name} version {version}")
            return "deployed"
        time.sleep(2)
    raise StepError(f"deployment {namespace}/{deployment} did not finish its rollout within {timeout:.0f}s")


def rollout_complete(dep) -> bool:
    """The same test as `kubectl rollout status`."""
    spec_replicas = dep.spec.replicas if dep.spec.replicas is not None else 1
    status = dep.status
    return ((status.observed_generation or 0) >= (dep.metadata.generation or 0)
            and (status.updated_replicas or 0) == spec_replicas
            and (status.replicas or 0) == spec_replicas
            and (status.available_replicas or 0) == spec_replicas)
