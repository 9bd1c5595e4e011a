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
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import requests
from tenacity import RetryCallState, Retrying, retry_if_exception_type, retry_if_result, stop_after_delay, wait_fixed

from kfp_components.steps.errors import StepError

logger = logging.getLogger(__name__)

DEPLOY_TARGETS = ("local", "kubernetes", "none")
# Several workers answer /model/info: require this many consecutive reads of the new version.
CONSECUTIVE_READS = 6
RELOAD_RETRY_SECONDS = 2.0
INFO_POLL_SECONDS = 0.5
SERVING_CONTAINER = "serving"
MODEL_ANNOTATION = "driftloop.io/model"
RESTARTED_AT_ANNOTATION = "kubectl.kubernetes.io/restartedAt"
CHANGE_CAUSE_ANNOTATION = "kubernetes.io/change-cause"  # the CHANGE-CAUSE column of `kubectl rollout history`
ROLLOUT_POLL_SECONDS = 2.0
API_TIMEOUT_SECONDS = 30


def deploy(
    target: str,
    model_name: str,
    version: str,
    serving_url: str = "",
    namespace: str = "mlops",
    deployment: str = "ml-api",
    timeout: float = 120.0,
    rollout_timeout: float = 600.0,
) -> str:
    if target == "none":
        logger.info("deploy_target=none: %s version %s registered, not deployed", model_name, version)
        return "skipped"
    if target not in DEPLOY_TARGETS:
        raise StepError(f"deploy_target={target!r}: unknown; use one of {', '.join(DEPLOY_TARGETS)}")
    token = os.environ.get("SERVING_ADMIN_TOKEN", "")
    require_reload_settings(target, serving_url, token)
    if target == "local":
        return reload_serving_app(serving_url, model_name, version, token, timeout)
    apps = apps_api()
    serving_deployment(apps, namespace, deployment)  # before anything changes
    reload_serving_app(serving_url, model_name, version, token, timeout)
    try:
        return rollout_deployment(apps, namespace, deployment, model_name, version, rollout_timeout)
    except StepError as exc:
        raise StepError(
            f"{exc} [the serving app at {serving_url.rstrip('/')} already serves {model_name} version "
            f"{version} (reloaded); the restart of its pods is what failed]"
        ) from exc


def require_reload_settings(target: str, serving_url: str, token: str) -> None:
    if not serving_url:
        example = ", e.g. its Service http://ml-api.mlops.svc.cluster.local:8000" if target == "kubernetes" else ""
        raise StepError(f"deploy_target={target} needs serving_url (the serving app's base URL{example})")
    if not token:
        raise StepError(
            f"deploy_target={target} needs the environment variable SERVING_ADMIN_TOKEN (the serving app's admin token)"
        )


def _last_result(state: RetryCallState) -> Any:
    """tenacity's `retry_error_callback` for polls: when time is up, the last attempt's result (or its
    exception), for the caller to say what it last saw."""
    assert state.outcome is not None
    return state.outcome.result()


def _poll(
    attempt: Callable[[], Any],
    until: Callable[[Any], bool],
    timeout: float,
    interval: float,
    retry_errors: type[BaseException] | tuple[type[BaseException], ...] = (),
) -> Any:
    """Call `attempt` every `interval` seconds until `until(result)` holds or `timeout` seconds have passed,
    and return the last result; the exceptions `retry_errors` are retried too (the last one is raised when
    time is up), any other ends the wait at once."""
    retry = retry_if_result(lambda result: not until(result)) | retry_if_exception_type(retry_errors)
    return Retrying(
        stop=stop_after_delay(max(timeout, 0.0)),
        wait=wait_fixed(interval),
        retry=retry,
        retry_error_callback=_last_result,
    )(attempt)


def reload_serving_app(serving_url: str, model_name: str, version: str, token: str, timeout: float) -> str:
    """POST /model/reload, then wait until GET /model/info answers the version CONSECUTIVE_READS times in a
    row (the app's workers all serve it), all within `timeout` seconds."""
    base = serving_url.rstrip("/")
    started = time.monotonic()

    def post_reload() -> requests.Response:
        return requests.post(f"{base}/model/reload", headers={"Authorization": f"Bearer {token}"}, timeout=60)

    # Not reachable or 503 (not ready: e.g. pods that wait for the first champion, which the register
    # step just set and they adopt within SERVING_LOAD_RETRY_SECONDS) is retried until the deadline; a
    # refused token or a model the app cannot load fails at once.
    try:
        resp = _poll(
            post_reload,
            lambda r: r.status_code != 503,
            timeout,
            RELOAD_RETRY_SECONDS,
            retry_errors=requests.RequestException,
        )
    except requests.RequestException as exc:
        raise StepError(f"serving app at {base} is not reachable: {exc} (for {timeout:.0f}s)") from exc
    if resp.status_code in (401, 403):
        raise StepError(
            f"serving app at {base} refused the admin token (HTTP {resp.status_code}); check SERVING_ADMIN_TOKEN"
        )
    if resp.status_code != 200:
        raise StepError(f"serving app at {base} could not reload: HTTP {resp.status_code}: {resp.text[:300]}")

    wanted = (model_name, str(version))
    seen: object = None
    consecutive = 0

    def read_info() -> int:
        """One GET /model/info; how many reads in a row have seen the wanted version."""
        nonlocal seen, consecutive
        try:
            info = requests.get(f"{base}/model/info", timeout=10).json()
            seen = (info.get("name"), str(info.get("version")))
        except (requests.RequestException, ValueError) as exc:
            seen = f"error: {exc}"
        consecutive = consecutive + 1 if seen == wanted else 0
        return consecutive

    remaining = timeout - (time.monotonic() - started)
    if _poll(read_info, lambda n: n >= CONSECUTIVE_READS, remaining, INFO_POLL_SECONDS) < CONSECUTIVE_READS:
        raise StepError(
            f"serving app at {base} did not move to {model_name} version {version} within {timeout:.0f}s "
            f"(last seen {seen})"
        )
    logger.info("Serving app at %s serves %s version %s", base, model_name, version)
    return "deployed"


# -- deploy_target=kubernetes: the serving Deployment ----------------------------------------------


def apps_api() -> Any:
    """An AppsV1Api from the pod's in-cluster config (its ServiceAccount), else from the kubeconfig
    ($KUBECONFIG, else ~/.kube/config), read now rather than at import."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except ConfigException as incluster:
        try:
            config.load_kube_config(
                config_file=os.environ.get("KUBECONFIG") or None, client_configuration=configuration
            )
        except (ConfigException, OSError) as exc:
            raise StepError(
                f"deploy_target=kubernetes: no in-cluster config ({incluster}) and no kubeconfig: {exc}"
            ) from exc
    return client.AppsV1Api(client.ApiClient(configuration))


def _api_call(apps: Any, verb: str, namespace: str, deployment: str, call: Callable[[], Any]) -> Any:
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
                f"Role and RoleBinding in {namespace} (see k8s/kfp/). API said: {message}"
            ) from exc
        if exc.status == 404:
            raise StepError(
                f"{where} not found (HTTP 404 on {verb}): check the pipeline parameters k8s_namespace "
                f"and k8s_deployment (the serving chart's Deployment is mlops/ml-api). "
                f"API said: {message}"
            ) from exc
        if exc.status == 401:
            raise StepError(
                f"{where}: the Kubernetes API at {apps.api_client.configuration.host} refused the "
                f"step's credentials (HTTP 401) on {verb}. API said: {message}"
            ) from exc
        raise StepError(f"{where}: {verb} failed: HTTP {exc.status} {exc.reason}. API said: {message}") from exc
    except HTTPError as exc:
        raise StepError(
            f"{where}: the Kubernetes API at {apps.api_client.configuration.host} is not reachable ({verb}): {exc}"
        ) from exc


def _api_message(exc: Any) -> str:
    """The `message` of the API's Status object, else the raw body."""
    try:
        return str(json.loads(exc.body)["message"])
    except (TypeError, ValueError, KeyError):
        return str(exc.body or exc.reason)[:300]


def _read_deployment(apps: Any, namespace: str, deployment: str) -> Any:
    return _api_call(
        apps,
        "get",
        namespace,
        deployment,
        lambda: apps.read_namespaced_deployment(
            name=deployment, namespace=namespace, _request_timeout=API_TIMEOUT_SECONDS
        ),
    )


def serving_deployment(apps: Any, namespace: str, deployment: str) -> Any:
    """The Deployment, checked to run the serving app (a container named `serving`)."""
    dep = _read_deployment(apps, namespace, deployment)
    containers = [c.name for c in (dep.spec.template.spec.containers or [])]
    if SERVING_CONTAINER not in containers:
        raise StepError(
            f"deployment {namespace}/{deployment} has no container named '{SERVING_CONTAINER}' "
            f"(containers: {', '.join(containers) or 'none'}): deploy_target=kubernetes rolls the "
            f"serving chart's Deployment; check k8s_namespace and k8s_deployment"
        )
    return dep


def rollout_deployment(
    apps: Any, namespace: str, deployment: str, model_name: str, version: str, timeout: float
) -> str:
    """Annotate the pod template with the model version and a restart time, then wait for the rollout."""
    model = f"{model_name}:{version}"
    patch = {
        "metadata": {"annotations": {CHANGE_CAUSE_ANNOTATION: f"driftloop deploy {model}"}},
        "spec": {
            "template": {
                "metadata": {
                    "annotations": {
                        MODEL_ANNOTATION: model,
                        RESTARTED_AT_ANNOTATION: dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    }
                }
            }
        },
    }
    # a dict body goes out as application/strategic-merge-patch+json, as kubectl sends it
    _api_call(
        apps,
        "patch",
        namespace,
        deployment,
        lambda: apps.patch_namespaced_deployment(
            name=deployment, namespace=namespace, body=patch, _request_timeout=API_TIMEOUT_SECONDS
        ),
    )

    def read_progress() -> Any:
        """One read of the Deployment; a rollout past its progress deadline ends the wait at once."""
        dep = _read_deployment(apps, namespace, deployment)
        if progress_deadline_exceeded(dep):
            raise StepError(
                f"deployment {namespace}/{deployment} exceeded its progress deadline rolling out {model} "
                f"({rollout_state(dep)}); see `kubectl -n {namespace} describe deployment {deployment}` "
                f"and the new pods' events"
            )
        return dep

    dep = _poll(read_progress, rollout_complete, timeout, ROLLOUT_POLL_SECONDS)
    if not rollout_complete(dep):
        raise StepError(
            f"deployment {namespace}/{deployment} did not finish its rollout of {model} within "
            f"{timeout:.0f}s ({rollout_state(dep)}); see "
            f"`kubectl -n {namespace} rollout status deployment/{deployment}`"
        )
    logger.info("Deployment %s/%s rolled out %s (%s)", namespace, deployment, model, rollout_state(dep))
    return "deployed"


def _wanted_replicas(dep: Any) -> int:
    return int(dep.spec.replicas) if dep.spec.replicas is not None else 1


def rollout_complete(dep: Any) -> bool:
    """The same test as `kubectl rollout status`."""
    wanted = _wanted_replicas(dep)
    status = dep.status
    return bool(
        (status.observed_generation or 0) >= (dep.metadata.generation or 0)
        and (status.updated_replicas or 0) == wanted
        and (status.replicas or 0) == wanted
        and (status.available_replicas or 0) == wanted
    )


def progress_deadline_exceeded(dep: Any) -> bool:
    """`kubectl rollout status` gives up too: the controller has seen the spec and reports
    Progressing=False with reason ProgressDeadlineExceeded."""
    status = dep.status
    if (status.observed_generation or 0) < (dep.metadata.generation or 0):
        return False
    return any(c.type == "Progressing" and c.reason == "ProgressDeadlineExceeded" for c in status.conditions or [])


def rollout_state(dep: Any) -> str:
    status = dep.status
    return (
        f"{status.updated_replicas or 0} of {_wanted_replicas(dep)} replicas updated, "
        f"{status.available_replicas or 0} available, {status.replicas or 0} in all; "
        f"generation {dep.metadata.generation}, observed {status.observed_generation}"
    )
