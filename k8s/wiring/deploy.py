"""deploy: DRIFT_RETRAIN_DEPLOY_TARGET=kubernetes, and DRIFT_RETRAIN_K8S_NAMESPACE/DEPLOYMENT name the
serving chart's Deployment (container `serving`) behind the serving Service."""

from __future__ import annotations

from k8s.objects import containers, pod_labels, pod_spec
from k8s.wiring.context import SERVING_CONTAINER, CheckResult, CheckResultSink, Context, airflow_env
from k8s.wiring.urls import resolve_url


def check_deploy(ctx: Context, result: CheckResult) -> None:
    env = airflow_env(ctx, CheckResultSink())  # missing variables are reported by the urls check
    target = env.get("DRIFT_RETRAIN_DEPLOY_TARGET")
    if target != "kubernetes":
        result.problems.append(
            f"airflow: DRIFT_RETRAIN_DEPLOY_TARGET={target!r}: on the cluster the deploy step "
            "must roll the serving Deployment (kubernetes)"
        )
    namespace, name = env.get("DRIFT_RETRAIN_K8S_NAMESPACE"), env.get("DRIFT_RETRAIN_K8S_DEPLOYMENT")
    if not namespace or not name:
        result.problems.append("airflow: DRIFT_RETRAIN_K8S_NAMESPACE / DRIFT_RETRAIN_K8S_DEPLOYMENT are not set")
        return
    serving = ctx.part("serving")
    if serving is None:
        result.problems.append("serving.yaml was not rendered")
        return
    dep = serving.get("Deployment", name, namespace)
    if dep is None:
        have = [f"{serving.ns(d)}/{d['metadata']['name']}" for d in serving.of_kind("Deployment")]
        result.problems.append(
            f"airflow: DRIFT_RETRAIN_K8S_NAMESPACE={namespace} DRIFT_RETRAIN_K8S_DEPLOYMENT={name}: "
            f"no such Deployment in serving.yaml (Deployments: {', '.join(have) or 'none'})"
        )
        return
    names = [c["name"] for c, _ in containers(pod_spec(dep), init=False)]
    if SERVING_CONTAINER not in names:
        result.problems.append(
            f"serving: Deployment {namespace}/{name} has no container {SERVING_CONTAINER!r} "
            f"(containers: {', '.join(names)})"
        )
    # the serving URL of the DAG/deploy step must reach this very Deployment
    url = env.get("DRIFT_RETRAIN_SERVING_URL")
    if url:
        tgt, problems = resolve_url(ctx, "airflow DRIFT_RETRAIN_SERVING_URL", url, "serving")
        if tgt and not problems:
            selector = (tgt.service.get("spec") or {}).get("selector") or {}
            labels = pod_labels(dep)
            if not all(labels.get(k) == v for k, v in selector.items()):
                result.problems.append(
                    f"airflow: DRIFT_RETRAIN_SERVING_URL={url} reaches Service "
                    f"{tgt.namespace}/{tgt.service['metadata']['name']}, which does not select "
                    f"the pods of Deployment {namespace}/{name}"
                )
    if not result.problems:
        result.verified.append(
            f"deploy step -> Deployment {namespace}/{name} container {SERVING_CONTAINER} (serving.yaml)"
        )
