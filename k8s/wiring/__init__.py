"""Checks across the four renders: does each part find the others, with the rights and settings it needs?

Every check returns the problems it found (each message names the setting, the object and what is
wrong) and what it verified. `run_checks` runs them all, one module each:

urls       every URL one part uses for another (Airflow's kfp_default and serving_default connections,
           the MLflow URL of Airflow, of the pipeline and of serving, the serving URL of the deploy
           step) resolves to a Service name.namespace[.svc.cluster.local] of the expected render, on a
           port that Service has, whose selector matches pods with the target port; MLflow accepts the
           Host header of each MLflow URL (MLFLOW_SERVER_ALLOWED_HOSTS)
deploy     DRIFT_RETRAIN_DEPLOY_TARGET=kubernetes, and DRIFT_RETRAIN_K8S_NAMESPACE/DEPLOYMENT name the
           serving chart's Deployment (container `serving`) behind the serving Service
images     every Airflow container, the task pod template and the executor's config use one image, the
           project's (not the stock apache/airflow image)
rbac       the ServiceAccount the pipeline runs as exists in the KFP render and a Role/RoleBinding in
           the Deployment's namespace allows it get and patch on that Deployment
secrets    no password, token or key in any values file (only references to existing Secrets); no
           rendered Secret with literal data, except the upstream-generated ones in ALLOWED_SECRETS;
           no literal credential in a rendered container's env or command line
containers every container of the project's objects (serving chart; Airflow and MLflow pods as far as
           our values control them) has resources, readiness and liveness probes, and runs as non-root,
           except the exemptions in EXEMPT (each with the reason)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from k8s.objects import Part
from k8s.wiring.context import CheckResult, Context, connection_url, default_values_files
from k8s.wiring.credentials import ALLOWED_SECRETS, check_secrets, scan_values
from k8s.wiring.deploy import check_deploy
from k8s.wiring.hardening import EXEMPT, check_containers
from k8s.wiring.images import check_images
from k8s.wiring.rbac import check_rbac
from k8s.wiring.urls import check_urls

__all__ = [
    "ALLOWED_SECRETS",
    "CHECKS",
    "EXEMPT",
    "CheckResult",
    "Context",
    "connection_url",
    "default_values_files",
    "run_checks",
    "scan_values",
]

CHECKS: list[tuple[str, Callable[[Context, CheckResult], None]]] = [
    ("urls", check_urls),
    ("deploy", check_deploy),
    ("images", check_images),
    ("rbac", check_rbac),
    ("secrets", check_secrets),
    ("containers", check_containers),
]


def run_checks(parts: dict[str, Part], values_files: list[Path] | None = None) -> list[CheckResult]:
    ctx = Context(parts, default_values_files() if values_files is None else values_files)
    results = []
    for name, fn in CHECKS:
        result = CheckResult(name)
        fn(ctx, result)
        results.append(result)
    return results
