"""What every wiring check shares: its result, the renders and values files it looks at, and the
environment of the containers (Airflow's DAG-running containers in particular)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from driftloop.contract import KFP_CONN_ID, MLFLOW_TRACKING_URI_ENV, SERVING_CONN_ID
from k8s import paths
from k8s.objects import Obj, Part, containers, workloads

#: The variables Airflow reads the DAG's connections from (kfp_default, serving_default).
KFP_CONN_VAR = f"AIRFLOW_CONN_{KFP_CONN_ID.upper()}"
SERVING_CONN_VAR = f"AIRFLOW_CONN_{SERVING_CONN_ID.upper()}"
#: Airflow env vars holding a URL of another part, and the render whose Service it must reach.
AIRFLOW_URLS = {
    KFP_CONN_VAR: "kfp",
    SERVING_CONN_VAR: "serving",
    MLFLOW_TRACKING_URI_ENV: "mlflow",
    "DRIFT_RETRAIN_MLFLOW_TRACKING_URI": "mlflow",
    "DRIFT_RETRAIN_SERVING_URL": "serving",
}
#: Airflow containers that run DAG code and so need those variables: the dag-processor (parses the DAG:
#: DRIFT_RETRAIN_* param defaults), the triggerer (deferred waits), the scheduler and the task pods.
AIRFLOW_DAG_CONTAINERS = ("dag-processor", "triggerer", "scheduler", "base")
SERVING_CONTAINER = "serving"


@dataclass
class CheckResult:
    name: str
    problems: list[str] = field(default_factory=list)
    verified: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class Context:
    parts: dict[str, Part]
    values_files: list[Path]

    def part(self, name: str) -> Part | None:
        return self.parts.get(name)


def default_values_files(values_dir: Path = paths.VALUES, serving_chart: Path = paths.SERVING_CHART) -> list[Path]:
    files = sorted(Path(values_dir).glob("*.yaml"))
    if (Path(serving_chart) / "values.yaml").is_file():
        files.append(Path(serving_chart) / "values.yaml")
    return files


class CheckResultSink(CheckResult):
    """Collects problems nobody reports (the urls check reports missing Airflow variables once)."""

    def __init__(self) -> None:
        super().__init__("sink")


def effective_env(container: Obj, part: Part, namespace: str) -> dict[str, object]:
    """name -> literal value (str) | {"secret": name} | {"from": ...} as the container sees it:
    envFrom ConfigMaps of the same render first, then env (env wins)."""
    env: dict[str, object] = {}
    for src in container.get("envFrom") or []:
        if "configMapRef" in src:
            cm = part.get("ConfigMap", src["configMapRef"]["name"], namespace)
            for k, v in ((cm or {}).get("data") or {}).items():
                env[(src.get("prefix") or "") + k] = str(v)
    for item in container.get("env") or []:
        if "valueFrom" in item:
            ref = item["valueFrom"].get("secretKeyRef")
            env[item["name"]] = {"secret": ref["name"], "key": ref.get("key")} if ref else {"from": item["valueFrom"]}
        else:
            env[item["name"]] = item.get("value", "")
    return env


def airflow_env(ctx: Context, result: CheckResult) -> dict[str, str]:
    """The Airflow variables of AIRFLOW_URLS and the deploy settings, as the DAG-running containers
    see them; problems when one is missing in some of them or they disagree."""
    part = ctx.part("airflow")
    if part is None:
        result.problems.append("airflow.yaml was not rendered")
        return {}
    wanted = list(AIRFLOW_URLS) + [
        "DRIFT_RETRAIN_DEPLOY_TARGET",
        "DRIFT_RETRAIN_K8S_NAMESPACE",
        "DRIFT_RETRAIN_K8S_DEPLOYMENT",
    ]
    seen: dict[str, dict[str, str]] = {}  # var -> {container label: value}
    found_containers = []
    for label, doc, spec in workloads(part):
        for c, _ in containers(spec, init=False):
            if c["name"] not in AIRFLOW_DAG_CONTAINERS:
                continue
            found_containers.append(f"{label} [{c['name']}]")
            env = effective_env(c, part, part.ns(doc))
            for var in wanted:
                value = env.get(var)
                if value is None:
                    result.problems.append(
                        f"airflow: {var} is not set in container {c['name']} of {label} (helm-values/airflow.yaml env)"
                    )
                elif not isinstance(value, str):
                    result.problems.append(
                        f"airflow: {var} comes from {value} in {label}; declare it as a "
                        "plain value so that make k8s can check it (it holds no credential)"
                    )
                else:
                    seen.setdefault(var, {})[f"{label} [{c['name']}]"] = value
    missing = [n for n in AIRFLOW_DAG_CONTAINERS if not any(f"[{n}]" in c for c in found_containers)]
    if missing:
        result.problems.append(
            f"airflow: no container named {', '.join(missing)} in airflow.yaml (expected "
            "the scheduler, triggerer, dag-processor and the task pod template)"
        )
    out = {}
    for var, by_container in seen.items():
        values = set(by_container.values())
        if len(values) > 1:
            result.problems.append(f"airflow: {var} differs between containers: {by_container}")
        out[var] = sorted(values)[0]
    return out


def connection_url(var: str, raw: str) -> tuple[str | None, str | None, Obj]:
    """(url, problem, extra) of an Airflow connection in JSON or URI form."""
    raw = raw.strip()
    if raw.startswith("{"):
        try:
            conn = json.loads(raw)
        except ValueError as exc:
            return None, f"{var} is not valid JSON: {exc}", {}
        host = str(conn.get("host") or "")
        if not host:
            return None, f"{var} has no host", conn.get("extra") or {}
        if "://" not in host:
            scheme = conn.get("schema") if conn.get("schema") in ("http", "https") else "http"
            host = f"{scheme}://{host}"
        if conn.get("port") and urlsplit(host).port is None:
            host = f"{host.rstrip('/')}:{conn['port']}"
        extra = conn.get("extra") or {}
        if isinstance(extra, str):
            try:
                extra = json.loads(extra)
            except ValueError:
                extra = {}
        return host, None, extra
    if "://" not in raw:
        return None, f"{var}={raw!r} is neither a JSON connection nor a URI", {}
    parts = urlsplit(raw)
    scheme = "https" if parts.scheme == "https" else "http"
    return f"{scheme}://{parts.netloc.rsplit('@', 1)[-1]}{parts.path}", None, {}
