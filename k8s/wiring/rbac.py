"""rbac: the ServiceAccount the pipeline runs as exists in the KFP render and a Role/RoleBinding in
the Deployment's namespace allows it get and patch on that Deployment."""

from __future__ import annotations

from k8s.objects import Obj
from k8s.wiring.context import KFP_CONN_VAR, CheckResult, CheckResultSink, Context, airflow_env, connection_url

DEFAULT_PIPELINE_SA = "pipeline-runner"


def pipeline_service_account(ctx: Context) -> str:
    env = airflow_env(ctx, CheckResultSink())
    raw = env.get(KFP_CONN_VAR) or ""
    _, _, extra = connection_url(KFP_CONN_VAR, raw) if raw else (None, None, {})
    return str(extra.get("service_account") or DEFAULT_PIPELINE_SA)


def _rule_allows(rule: Obj, verb: str, deployment: str) -> bool:
    groups, resources = rule.get("apiGroups") or [], rule.get("resources") or []
    verbs, names = rule.get("verbs") or [], rule.get("resourceNames") or []
    return (
        ("apps" in groups or "*" in groups)
        and ("deployments" in resources or "*" in resources)
        and (verb in verbs or "*" in verbs)
        and (not names or deployment in names)
    )


def check_rbac(ctx: Context, result: CheckResult) -> None:
    env = airflow_env(ctx, CheckResultSink())
    namespace = env.get("DRIFT_RETRAIN_K8S_NAMESPACE") or "mlops"
    deployment = env.get("DRIFT_RETRAIN_K8S_DEPLOYMENT") or "ml-api"
    sa = pipeline_service_account(ctx)
    kfp = ctx.part("kfp")
    if kfp is None:
        result.problems.append("kfp.yaml was not rendered")
        return
    sa_ns = kfp.namespace
    if kfp.get("ServiceAccount", sa, sa_ns) is None:
        result.problems.append(
            f"kfp: the pipeline's ServiceAccount {sa_ns}/{sa} ({KFP_CONN_VAR} "
            "extra.service_account, default pipeline-runner) is not in kfp.yaml"
        )
    roles: dict[tuple[str, str, str], tuple[str, Obj]] = {}
    bindings = []
    for part in ctx.parts.values():
        for doc in part.of_kind("Role", "ClusterRole"):
            ns = part.ns(doc) if doc["kind"] == "Role" else ""
            roles[(doc["kind"], doc["metadata"]["name"], ns)] = (part.name, doc)
        for doc in part.of_kind("RoleBinding"):
            if part.ns(doc) == namespace:
                bindings.append((part.name, doc))
    granted: dict[str, list[str]] = {"get": [], "patch": [], "list": [], "watch": []}
    bound = []
    for part_name, rb in bindings:
        subjects = rb.get("subjects") or []
        if not any(
            s.get("kind") == "ServiceAccount" and s.get("name") == sa and (s.get("namespace") or namespace) == sa_ns
            for s in subjects
        ):
            continue
        ref = rb.get("roleRef") or {}
        kind, name = str(ref.get("kind")), str(ref.get("name"))
        key = (kind, name, namespace if kind == "Role" else "")
        role = roles.get(key)
        if role is None:
            result.problems.append(
                f"{part_name}: RoleBinding {namespace}/{rb['metadata']['name']} refers to "
                f"{ref.get('kind')} {ref.get('name')}, which is not in the renders"
            )
            continue
        bound.append(f"{key[0]} {ref.get('name')} via RoleBinding {rb['metadata']['name']} ({part_name}.yaml)")
        for rule in role[1].get("rules") or []:
            for verb in granted:
                if _rule_allows(rule, verb, deployment):
                    granted[verb].append(name)
    for verb in ("get", "patch"):
        if not granted[verb]:
            result.problems.append(
                f"rbac: ServiceAccount {sa_ns}/{sa} may not {verb!r} Deployment {namespace}/{deployment}: no "
                f"Role bound to it in {namespace} allows {verb} on apps/deployments {deployment!r} "
                f"(bound: {'; '.join(bound) or 'nothing'}) - k8s/kfp/serving-deployer-rbac.yaml"
            )
    if not result.problems:
        extra = [v for v in ("list", "watch") if granted[v]]
        result.verified.append(
            f"ServiceAccount {sa_ns}/{sa} may get, patch{', ' + ', '.join(extra) if extra else ''} "
            f"Deployment {namespace}/{deployment} ({'; '.join(bound)})"
        )
