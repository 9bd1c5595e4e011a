"""containers: every container of the project's objects (serving chart; Airflow and MLflow pods as far
as our values control them) has resources, readiness and liveness probes, and runs as non-root, except
the exemptions in EXEMPT (each with the reason)."""

from __future__ import annotations

import fnmatch

from k8s.objects import Obj, containers, workloads
from k8s.wiring.context import CheckResult, Context

#: Hardening exemptions, (part, container-name glob, what) -> reason; what = resources | readiness |
#: liveness | nonroot.
EXEMPT = {
    (
        "airflow",
        "scheduler",
        "readiness",
    ): "the Airflow chart defines no readiness probe for the scheduler (it serves no traffic); its "
    "liveness probe checks the scheduler's heartbeat",
    (
        "airflow",
        "dag-processor",
        "readiness",
    ): "the Airflow chart defines no readiness probe for the dag-processor (it serves no traffic)",
    (
        "airflow",
        "triggerer",
        "readiness",
    ): "the Airflow chart defines no readiness probe for the triggerer; its liveness probe checks the "
    "triggerer's heartbeat",
    ("airflow", "*-log-groomer", "readiness"): "log-groomer sidecars: the Airflow chart defines no probes",
    ("airflow", "*-log-groomer", "liveness"): "log-groomer sidecars: the Airflow chart defines no probes",
    (
        "mlflow",
        "ini-file-initializer",
        "resources",
    ): "init container of the MLflow chart (busybox writing the auth config); the chart sets no "
    "resources on it and has no value for them",
}
#: Parts whose containers the hardening check covers (KFP is upstream, untouched by our values).
HARDENED_PARTS = ("serving", "airflow", "mlflow")


def exempt(part: str, container: str, what: str) -> str | None:
    for (p, pattern, w), reason in EXEMPT.items():
        if p == part and w == what and fnmatch.fnmatch(container, pattern):
            return reason
    return None


def _non_root(pod_sc: Obj, sc: Obj) -> bool:
    run_as_user = sc.get("runAsUser", pod_sc.get("runAsUser"))
    non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
    if run_as_user == 0:
        return False
    return bool(non_root) or (isinstance(run_as_user, int) and run_as_user > 0)


def check_containers(ctx: Context, result: CheckResult) -> None:
    used_exemptions = set()
    for part_name in HARDENED_PARTS:
        part = ctx.part(part_name)
        if part is None:
            result.problems.append(f"{part_name}.yaml was not rendered")
            continue
        count = 0
        for label, doc, spec in workloads(part):
            long_running = doc.get("kind") in ("Deployment", "StatefulSet", "DaemonSet")
            pod_sc = spec.get("securityContext") or {}
            for c, is_init in containers(spec):
                count += 1
                name = c["name"]
                where = f"{part_name}: {label} container {name}"
                res = c.get("resources") or {}
                req, lim = res.get("requests") or {}, res.get("limits") or {}
                if not (req.get("cpu") and req.get("memory") and lim.get("memory")):
                    reason = exempt(part_name, name, "resources")
                    if reason:
                        used_exemptions.add((part_name, name, "resources", reason))
                    else:
                        result.problems.append(f"{where} has no resources (requests cpu+memory and a memory limit)")
                if not _non_root(pod_sc, c.get("securityContext") or {}):
                    reason = exempt(part_name, name, "nonroot")
                    if reason:
                        used_exemptions.add((part_name, name, "nonroot", reason))
                    else:
                        result.problems.append(f"{where} may run as root (set runAsNonRoot / a non-zero runAsUser)")
                if is_init or not long_running:
                    continue  # init containers and run-to-completion pods have no probes
                for probe in ("readiness", "liveness"):
                    if not c.get(f"{probe}Probe"):
                        reason = exempt(part_name, name, probe)
                        if reason:
                            used_exemptions.add((part_name, name, probe, reason))
                        else:
                            result.problems.append(f"{where} has no {probe}Probe")
        result.verified.append(f"{part_name}: {count} containers checked (resources, non-root, probes)")
    for part_name, name, what, reason in sorted(used_exemptions):
        result.verified.append(f"exempt: {part_name} {name} without {what}: {reason}")
