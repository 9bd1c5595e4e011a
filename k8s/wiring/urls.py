"""urls: every URL one part uses for another resolves to a Service of the expected render, on a port
that Service has, whose selector matches pods with the target port; MLflow accepts the Host header of
each MLflow URL (MLFLOW_SERVER_ALLOWED_HOSTS)."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from urllib.parse import urlsplit

from k8s.objects import Obj, Part, containers, pod_labels, pod_spec
from k8s.wiring.context import (
    AIRFLOW_URLS,
    KFP_CONN_VAR,
    SERVING_CONTAINER,
    CheckResult,
    Context,
    airflow_env,
    connection_url,
    effective_env,
)


@dataclass
class Target:
    part: str
    service: Obj
    namespace: str
    port: Obj


#: (Service name, namespace) -> (render, Service) of every Service in the renders.
ServiceIndex = dict[tuple[str, str], tuple[str, Obj]]


def service_index(ctx: Context) -> ServiceIndex:
    index: ServiceIndex = {}
    for part in ctx.parts.values():
        for svc in part.of_kind("Service"):
            index[(svc["metadata"]["name"], part.ns(svc))] = (part.name, svc)
    return index


def resolve_url(
    ctx: Context, source: str, url: str, expect: str, index: ServiceIndex | None = None
) -> tuple[Target | None, list[str]]:
    """Resolve `url` to a Service of render `expect`; (target, problems)."""
    index = index if index is not None else service_index(ctx)
    parts = urlsplit(url if "://" in url else f"http://{url}")
    host = parts.hostname or ""
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None, [f"{source}: {url!r} has an invalid port"]
    labels = host.split(".")
    if not (
        len(labels) == 2
        or (len(labels) == 3 and labels[2] == "svc")
        or (len(labels) == 5 and labels[2:] == ["svc", "cluster", "local"])
    ):
        return None, [
            f"{source}: host {host!r} of {url} is not a Service name of the form name.namespace[.svc.cluster.local]"
        ]
    name, namespace = labels[0], labels[1]
    hit = index.get((name, namespace))
    if hit is None:
        there = sorted(n for (n, ns) in index if ns == namespace)
        return None, [
            f"{source}: {url} -> no Service {name!r} in namespace {namespace!r} in the renders "
            f"(Services in {namespace}: {', '.join(there) or 'none'})"
        ]
    part_name, svc = hit
    problems = []
    if part_name != expect:
        problems.append(
            f"{source}: {url} -> Service {namespace}/{name} is in {part_name}.yaml, expected a Service of {expect}.yaml"
        )
    ports = (svc.get("spec") or {}).get("ports") or []
    port_entry = next((p for p in ports if int(p.get("port", -1)) == port), None)
    if port_entry is None:
        problems.append(
            f"{source}: {url} -> Service {namespace}/{name} has no port {port} "
            f"(ports: {', '.join(str(p.get('port')) for p in ports) or 'none'})"
        )
        return None, problems
    problems += service_backends(ctx.parts[part_name], svc, namespace, port_entry, f"{source}: {url}")
    return Target(part_name, svc, namespace, port_entry), problems


def service_backends(part: Part, svc: Obj, namespace: str, port: Obj, source: str) -> list[str]:
    """The Service's selector must match the pods of a workload that has the target port."""
    selector = (svc.get("spec") or {}).get("selector") or {}
    name = svc["metadata"]["name"]
    if not selector:
        return [f"{source} -> Service {namespace}/{name} has no selector"]
    target = port.get("targetPort", port.get("port"))
    matched = []
    for doc in part.docs:
        if pod_spec(doc) is None or part.ns(doc) != namespace or doc.get("kind") == "Job":
            continue
        labels = pod_labels(doc)
        if all(labels.get(k) == v for k, v in selector.items()):
            matched.append(doc)
    if not matched:
        return [f"{source} -> Service {namespace}/{name}: its selector {selector} matches no pods in {part.name}.yaml"]
    for doc in matched:
        for c, _ in containers(pod_spec(doc), init=False):
            for p in c.get("ports") or []:
                if p.get("name") == target or p.get("containerPort") == target:
                    return []
    return [
        f"{source} -> Service {namespace}/{name}: targetPort {target!r} is not a container port of "
        f"{', '.join(part.label(d) for d in matched)}"
    ]


def mlflow_allowed_hosts(ctx: Context) -> tuple[list[str] | None, str]:
    part = ctx.part("mlflow")
    if part is None:
        return None, "mlflow.yaml was not rendered"
    for doc in part.of_kind("Deployment"):
        for c, _ in containers(pod_spec(doc), init=False):
            if c["name"] == "mlflow":
                env = effective_env(c, part, part.ns(doc))
                value = env.get("MLFLOW_SERVER_ALLOWED_HOSTS")
                if value is None:
                    return [], "not set (MLflow's default: localhost and private IP addresses only)"
                return [h.strip() for h in str(value).split(",") if h.strip()], str(value)
    return None, "no container 'mlflow' in mlflow.yaml"


def host_allowed(allowed: list[str], host: str) -> bool:
    """MLflow's own rule (mlflow.server.security_utils.is_allowed_host_header)."""
    if "*" in allowed:
        return True
    return any(fnmatch.fnmatch(host, a) if "*" in a else host == a for a in allowed)


def check_urls(ctx: Context, result: CheckResult) -> None:
    index = service_index(ctx)
    env = airflow_env(ctx, result)
    mlflow_urls: list[tuple[str, str]] = []
    for var, expect in AIRFLOW_URLS.items():
        raw = env.get(var)
        if raw is None:
            continue
        if var.startswith("AIRFLOW_CONN_"):
            found_url, problem, extra = connection_url(var, raw)
            if problem or found_url is None:
                result.problems.append(f"airflow: {problem}")
                continue
            url = found_url
            if var == KFP_CONN_VAR and str(extra.get("backend", "local")).lower() != "kfp":
                result.problems.append(
                    f"airflow: {var} has extra.backend={extra.get('backend', 'local')!r}: on "
                    "the cluster it must be 'kfp' (the KFP API), not the local runner"
                )
        else:
            url = raw
        target, problems = resolve_url(ctx, f"airflow {var}", url, expect, index)
        result.problems += problems
        if target and not problems:
            result.verified.append(
                f"airflow {var}={url} -> Service {target.namespace}/"
                f"{target.service['metadata']['name']}:{target.port['port']} ({target.part}.yaml)"
            )
        if expect == "mlflow":
            mlflow_urls.append((f"airflow {var}", url))
    # serving -> MLflow: the ConfigMap the serving container reads
    serving = ctx.part("serving")
    if serving is not None:
        found = False
        for doc in serving.of_kind("Deployment"):
            for c, _ in containers(pod_spec(doc), init=False):
                if c["name"] != SERVING_CONTAINER:
                    continue
                found = True
                value = effective_env(c, serving, serving.ns(doc)).get("MLFLOW_TRACKING_URI")
                source = f"serving {serving.label(doc)} MLFLOW_TRACKING_URI"
                if not isinstance(value, str) or not value:
                    result.problems.append(f"{source} is not set in its ConfigMap (helm-values/serving.yaml config)")
                    continue
                url = value
                target, problems = resolve_url(ctx, source, url, "mlflow", index)
                result.problems += problems
                if target and not problems:
                    result.verified.append(
                        f"{source}={url} -> Service {target.namespace}/"
                        f"{target.service['metadata']['name']}:{target.port['port']}"
                    )
                mlflow_urls.append((source, url))
        if not found:
            result.problems.append(f"serving: no Deployment with a container {SERVING_CONTAINER!r} in serving.yaml")
    else:
        result.problems.append("serving.yaml was not rendered")
    # MLflow must accept the Host header of every MLflow URL
    allowed, shown = mlflow_allowed_hosts(ctx)
    if allowed is None:
        result.problems.append(f"mlflow: {shown}")
        return
    for source, url in mlflow_urls:
        netloc = urlsplit(url).netloc.rsplit("@", 1)[-1]
        if not host_allowed(allowed, netloc):
            result.problems.append(
                f"{source}={url}: MLflow rejects the Host header {netloc!r} "
                f"(MLFLOW_SERVER_ALLOWED_HOSTS {shown}): add it to serverAllowedHosts in "
                "helm-values/mlflow.yaml"
            )
        else:
            result.verified.append(f"MLflow allows Host {netloc} ({source})")
