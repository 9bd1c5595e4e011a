"""Rolling the new champion out.

- `local`: ask the serving app to reload (authenticated POST /model/reload) and wait until it serves
  the version.
- `kubernetes`: the serving app on a cluster. Its pods share one state store (PostgreSQL) whose
  'served' record says which version every pod serves, whatever the registry alias says, so a
  rollout alone does not move the served model. Hence: check the Deployment (it exists, the step may
  read it, it has the container `serving`), do the same reload as `local` through the serving Service
  (serving_url) and wait until it serves the version, then annotate the Deployment's pod template with
  the model version and a restart time (like `kubectl rollout restart`) and wait for the rollout (the
  test of `kubectl rollout status`): the restarted pods are proven to come up with the served record,
  and `kubectl rollout history` names the model of each revision.
- `none`: nothing (a model no serving app serves yet).

The admin token comes from the environment variable SERVING_ADMIN_TOKEN (on a KFP cluster from the
pipeline's Secret, see kfp_components/pipeline.py); tokens never travel as pipeline parameters.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import time

import requests

from kfp_components.steps.errors import StepError

DEPLOY_TARGETS = ("local", "kubernetes", "none")
# Several workers answer /model/info: require this many consecutive reads of the new version.
CONSECUTIVE_READS = 6
RELOAD_RETRY_SECONDS = 2.0
SERVING_CONTAINER = "serving"
MODEL_ANNOTATION = "driftloop.io/model"
RESTARTED_AT_ANNOTATION = "kubectl.kubernetes.io/restartedAt"
CHANGE_CAUSE_ANNOTATION = "kubernetes.io/change-cause"  # the CHANGE-CAUSE column of `kubectl rollout history`
ROLLOUT_POLL_SECONDS = 2.0
API_TIMEOUT_SECONDS = 30


def deploy(target: str, model_name: str, version: str, serving_url: str = "", namespace: str = "mlops",
           deployment: str = "ml-api", timeout: float = 120.0, rollout_timeout: float = 600.0) -> str:
    if target == "none":
        print(f"deploy_target=none: {model_name} version {version} registered, not deployed")
        return "skipped"
    token = os.environ.get("SERVING_ADMIN_TOKEN", "")
    if target == "local":
        return reload_serving_app(serving_url, model_name, version, token, timeout)
    if target == "kubernetes":
        require_reload_settings(target, serving_url, token)
        apps = apps_api()
        serving_deployment(apps, namespace, deployment)  # before anything changes
        reload_serving_app(serving_url, model_name, version, token, timeout, target=target)
        try:
            return rollout_deployment(apps, namespace, deployment, model_name, version, rollout_timeout)
        except StepError as exc:
            raise StepError(f"{exc} [the serving app at {serving_url.rstrip('/')} already serves {model_name} version "
                            f"{version} (reloaded); the restart of its pods is what failed]") from exc
    raise StepError(f"deploy_target={target!r}: unknown; use one of {', '.join(DEPLOY_TARGETS)}")


def require_reload_settings(target: str, serving_url: str, token: str) -> None:
    if not serving_url:
        raise StepError(f"deploy_target={target} needs serving_url (the serving app's base URL"
                        f"{', e.g. its Service http://ml-api.mlops.svc.cluster.local:8000' if target == 'kubernetes' else ''})")
    if not token:
        raise StepError(f"deploy_target={target} needs the environment variable SERVING_ADMIN_TOKEN (the serving app's admin token)")


def reload_serving_app(serving_url: str, model_name: str, version: str, token: str, timeout: float,
                       target: str = "local") -> str:
    require_reload_settings(target, serving_url, token)
    base = serving_url.rstrip("/")
    deadline = time.monotonic() + timeout
    while True:
        # Not reachable or 503 (not ready: e.g. pods that wait for the first champion, which the
        # register step just set and they adopt within SERVING_LOAD_RETRY_SECONDS) is retried until
        # the deadline; a refused token or a model the app cannot load fails at once.
        try:
            resp = requests.post(f"{base}/model/reload", headers={"Authorization": f"Bearer {token}"}, timeout=60)
            problem = None if resp.status_code != 503 else f"HTTP 503: {resp.text[:300]}"
        except requests.RequestException as exc:
            resp, problem = None, f"not reachable: {exc}"
        if problem is None or time.monotonic() >= deadline:
            break
        time.sleep(RELOAD_RETRY_SECONDS)
    if resp is None:
        raise StepError(f"serving app at {base} is {problem} (for {timeout:.0f}s)")
    if resp.status_code in (401, 403):
        raise StepError(f"serving app at {base} refused the admin token (HTTP {resp.status_code}); check SERVING_ADMIN_TOKEN")
    if resp.status_code != 200:
        raise StepError(f"serving app at {base} could not reload: HTTP {resp.status_code}: {resp.text[:300]}")
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


# -- deploy_target=kubernetes: the serving Deployment ----------------------------------------------

def apps_api():
    """An AppsV1Api from the pod's in-cluster config (its ServiceAccount), else from the kubeconfig
    ($KUBECONFIG, else ~/.kube/config), read now rather than at import."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except ConfigException as incluster:
        try:
            config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None, client_configuration=configuration)
        except (ConfigException, OSError) as exc:
            raise StepError(f"deploy_target=kubernetes: no in-cluster config ({incluster}) and no kubeconfig: {exc}") from exc
    return client.AppsV1Api(client.ApiClient(configuration))


def _api_call(apps, verb: str, namespace: str, deployment: str, call):
    """Run one API call; failures become StepErrors that name the verb, the resource and the cause."""
    from kubernetes.client import ApiException
    from urllib3.exceptions import HTTPError

    where = f"deployment {namespace}/{deployment}"
    try:
        return call()
    except ApiException as exc:
        message = _api_message(exc)
        if exc.status == 403:
            raise StepError(
                f"{where}: the Kubernetes API refused to {verb} it (HTTP 403 Forbidden): the step's "
                f"ServiceAccount (pipeline-runner in namespace kubeflow on the KFP cluster) lacks the RBAC verb "
                f"'{verb}' on resource 'deployments' (API group 'apps') in namespace {namespace}; grant it with a "
                f"Role and RoleBinding in {namespace} (see k8s/kfp/). API said: {message}") from exc
        if exc.status == 404:
            raise StepError(f"{where} not found (HTTP 404 on {verb}): check the pipeline parameters k8s_namespace "
                            f"and k8s_deployment (the serving chart's Deployment is mlops/ml-api). API said: {message}") from exc
        if exc.status == 401:
            raise StepError(f"{where}: the Kubernetes API at {apps.api_client.configuration.host} refused the "
                            f"step's credentials (HTTP 401) on {verb}. API said: {message}") from exc
        raise StepError(f"{where}: {verb} failed: HTTP {exc.status} {exc.reason}. API said: {message}") from exc
    except HTTPError as exc:
        raise StepError(f"{where}: the Kubernetes API at {apps.api_client.configuration.host} is not reachable "
                        f"({verb}): {exc}") from exc


def _api_message(exc) -> str:
    """The `message` of the API's Status object, else the raw body."""
    try:
        return str(json.loads(exc.body)["message"])
    except (TypeError, ValueError, KeyError):
        return str(exc.body or exc.reason)[:300]


def serving_deployment(apps, namespace: str, deployment: str):
    """The Deployment, checked to run the serving app (a container named `serving`)."""
    dep = _api_call(apps, "get", namespace, deployment, lambda: apps.read_namespaced_deployment(
        name=deployment, namespace=namespace, _request_timeout=API_TIMEOUT_SECONDS))
    containers = [c.name for c in (dep.spec.template.spec.containers or [])]
    if SERVING_CONTAINER not in containers:
        raise StepError(f"deployment {namespace}/{deployment} has no container named '{SERVING_CONTAINER}' "
                        f"(containers: {', '.join(containers) or 'none'}): deploy_target=kubernetes rolls the "
                        f"serving chart's Deployment; check k8s_namespace and k8s_deployment")
    return dep


def rollout_deployment(apps, namespace: str, deployment: str, model_name: str, version: str, timeout: float) -> str:
    """Annotate the pod template with the model version and a restart time, then wait for the rollout."""
    model = f"{model_name}:{version}"
    patch = {
        "metadata": {"annotations": {CHANGE_CAUSE_ANNOTATION: f"driftloop deploy {model}"}},
        "spec": {"template": {"metadata": {"annotations": {
            MODEL_ANNOTATION: model,
            RESTARTED_AT_ANNOTATION: dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }}}},
    }
    # a dict body goes out as application/strategic-merge-patch+json, as kubectl sends it
    _api_call(apps, "patch", namespace, deployment, lambda: apps.patch_namespaced_deployment(
        name=deployment, namespace=namespace, body=patch, _request_timeout=API_TIMEOUT_SECONDS))
    deadline = time.monotonic() + timeout
    while True:
        dep = _api_call(apps, "get", namespace, deployment, lambda: apps.read_namespaced_deployment(
            name=deployment, namespace=namespace, _request_timeout=API_TIMEOUT_SECONDS))
        if progress_deadline_exceeded(dep):
            raise StepError(f"deployment {namespace}/{deployment} exceeded its progress deadline rolling out {model} "
                            f"({rollout_state(dep)}); see `kubectl -n {namespace} describe deployment {deployment}` "
                            f"and the new pods' events")
        if rollout_complete(dep):
            print(f"Deployment {namespace}/{deployment} rolled out {model} ({rollout_state(dep)})")
            return "deployed"
        if time.monotonic() >= deadline:
            raise StepError(f"deployment {namespace}/{deployment} did not finish its rollout of {model} within "
                            f"{timeout:.0f}s ({rollout_state(dep)}); see "
                            f"`kubectl -n {namespace} rollout status deployment/{deployment}`")
        time.sleep(ROLLOUT_POLL_SECONDS)


def rollout_complete(dep) -> bool:
    """The same test as `kubectl rollout status`."""
    spec_replicas = dep.spec.replicas if dep.spec.replicas is not None else 1
    status = dep.status
    return ((status.observed_generation or 0) >= (dep.metadata.generation or 0)
            and (status.updated_replicas or 0) == spec_replicas
            and (status.replicas or 0) == spec_replicas
            and (status.available_replicas or 0) == spec_replicas)


def progress_deadline_exceeded(dep) -> bool:
    """`kubectl rollout status` gives up too: the controller has seen the spec and reports
    Progressing=False with reason ProgressDeadlineExceeded."""
    status = dep.status
    if (status.observed_generation or 0) < (dep.metadata.generation or 0):
        return False
    return any(c.type == "Progressing" and c.reason == "ProgressDeadlineExceeded" for c in status.conditions or [])


def rollout_state(dep) -> str:
    status = dep.status
    want = dep.spec.replicas if dep.spec.replicas is not None else 1
    return (f"{status.updated_replicas or 0} of {want} replicas updated, {status.available_replicas or 0} available, "
            f"{status.replicas or 0} in all; generation {dep.metadata.generation}, observed "
            f"{status.observed_generation}")
