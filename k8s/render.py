"""Render the four parts of the cluster deployment into build/k8s/.

| file | how |
| --- | --- |
| airflow.yaml | `helm template airflow ../shared/k8s/airflow-1.22.0.tgz -n airflow -f helm-values/airflow.yaml` |
| mlflow.yaml | `helm template mlflow ../shared/k8s/mlflow-1.11.5.tgz -n mlops -f helm-values/mlflow.yaml` |
| kfp.yaml | `kubectl kustomize k8s/kfp` (overlay on build/kfp-2.17.0/ = ../shared/k8s/kfp-2.17.0-offline.tgz) |
| serving.yaml | `helm template ml-api serving/chart -n mlops -f helm-values/serving.yaml` |

helm applies each chart's values.schema.json (a wrong type or an unknown key under a section the
schema closes fails with the schema's message naming the key); on top of that, a top-level key the
chart's schema does not know fails here (the Airflow chart's schema leaves the top level open).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from k8s import paths
from k8s.objects import Obj, Part, load_all
from k8s.paths import rel
from k8s.tools import ensure_tools, helm_env

PARTS = ("airflow", "mlflow", "kfp", "serving")
#: Capabilities.KubeVersion for `helm template`: the oldest Kubernetes minor the render is validated for.
KUBE_VERSION = "1.33.0"


class RenderError(RuntimeError):
    """A part could not be rendered; the message says which and why."""

    def __init__(self, part: str, message: str):
        super().__init__(f"{part}: {message}")
        self.part = part


@dataclass
class HelmRelease:
    part: str
    release: str
    namespace: str
    chart: Path
    values: Path


@dataclass
class Sources:
    """Inputs of a render (tests point some of them at broken copies)."""

    values_dir: Path = paths.VALUES
    serving_chart: Path = paths.SERVING_CHART
    kfp_overlay: Path = paths.KFP_OVERLAY
    airflow_chart: Path = paths.AIRFLOW_CHART
    mlflow_chart: Path = paths.MLFLOW_CHART
    kfp_archive: Path = paths.KFP_ARCHIVE
    out: Path = paths.OUT
    overrides: dict[str, Path] = field(default_factory=dict)  # part -> values file instead of values_dir/<part>.yaml

    def values(self, part: str) -> Path:
        return self.overrides.get(part) or self.values_dir / f"{part}.yaml"

    def release(self, part: str) -> HelmRelease:
        if part == "airflow":
            return HelmRelease(part, "airflow", "airflow", self.airflow_chart, self.values(part))
        if part == "mlflow":
            return HelmRelease(part, "mlflow", "mlops", self.mlflow_chart, self.values(part))
        if part == "serving":
            return HelmRelease(part, "ml-api", "mlops", self.serving_chart, self.values(part))
        raise KeyError(part)


def render_all(src: Sources | None = None, parts: tuple[str, ...] = PARTS, write: bool = True) -> dict[str, Part]:
    """Render `parts`; raise RenderError for the first that fails."""
    src = src or Sources()
    return {name: render_part(name, src, write=write) for name in parts}


def render_part(name: str, src: Sources | None = None, write: bool = True) -> Part:
    src = src or Sources()
    start = time.monotonic()
    if name == "kfp":
        text, namespace = render_kfp(src), "kubeflow"
    elif name in ("airflow", "mlflow", "serving"):
        rel_ = src.release(name)
        text, namespace = helm_template(rel_), rel_.namespace
    else:
        raise RenderError(name, f"unknown part (one of {', '.join(PARTS)})")
    try:
        docs = load_all(text)
    except yaml.YAMLError as exc:
        raise RenderError(name, f"the rendered YAML does not parse: {exc}") from None
    part = Part(name=name, namespace=namespace, docs=docs)
    if write:
        src.out.mkdir(parents=True, exist_ok=True)
        part.path = src.out / f"{name}.yaml"
        part.path.write_text(text)
    part.seconds = time.monotonic() - start
    return part


# --- helm -------------------------------------------------------------------------------------------


def helm_template(r: HelmRelease) -> str:
    if r.part == "serving" and not (r.chart / "Chart.yaml").is_file():
        raise RenderError(
            r.part,
            f"{rel(r.chart / 'Chart.yaml')} is missing: the serving app's own Helm chart "
            f"(release {r.release}, namespace {r.namespace}) must exist before serving.yaml "
            "can be rendered",
        )
    if not Path(r.chart).exists():
        raise RenderError(
            r.part,
            f"chart {r.chart} not found (upstream packages are read from "
            f"{rel(paths.SHARED)}; set DRIFTLOOP_SHARED_K8S to use another directory)",
        )
    if not r.values.is_file():
        raise RenderError(r.part, f"values file {rel(r.values)} not found")
    check_top_level_keys(r)
    cmd = [
        str(ensure_tools()["helm"]),
        "template",
        r.release,
        str(r.chart),
        "--namespace",
        r.namespace,
        "--values",
        str(r.values),
        "--kube-version",
        KUBE_VERSION,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=helm_env(), cwd=paths.REPO)
    if proc.returncode != 0:
        raise RenderError(
            r.part,
            f"helm template {r.release} {rel(r.chart)} -n {r.namespace} -f {rel(r.values)} "
            f"failed:\n{proc.stderr.strip()}",
        )
    return proc.stdout


def chart_schema(chart: Path) -> Obj | None:
    """The chart's values.schema.json (from a chart directory or a packaged .tgz), or None."""
    chart = Path(chart)
    if chart.is_dir():
        f = chart / "values.schema.json"
        return json.loads(f.read_text()) if f.is_file() else None
    with tarfile.open(chart) as tgz:
        for m in tgz.getmembers():
            parts = m.name.split("/")
            if len(parts) == 2 and parts[1] == "values.schema.json":
                extracted = tgz.extractfile(m)
                if extracted is None:
                    return None
                schema: Obj = json.load(extracted)
                return schema
    return None


def check_top_level_keys(r: HelmRelease) -> None:
    """A top-level values key that the chart's schema does not declare is a typo: fail naming it."""
    schema = chart_schema(r.chart)
    if not schema or "properties" not in schema:
        return
    try:
        values = yaml.safe_load(r.values.read_text()) or {}
    except yaml.YAMLError as exc:
        raise RenderError(r.part, f"{rel(r.values)} is not valid YAML: {exc}") from None
    if not isinstance(values, dict):
        raise RenderError(r.part, f"{rel(r.values)}: values must be a mapping, got {type(values).__name__}")
    unknown = sorted(set(values) - set(schema["properties"]))
    if unknown:
        raise RenderError(
            r.part,
            f"{rel(r.values)}: unknown top-level key(s) {', '.join(map(repr, unknown))}: "
            f"not in the values.schema.json of {rel(r.chart)}",
        )


# --- kustomize --------------------------------------------------------------------------------------


def render_kfp(src: Sources) -> str:
    ensure_kfp_tree(src.kfp_archive)
    if not (src.kfp_overlay / "kustomization.yaml").is_file():
        raise RenderError("kfp", f"{rel(src.kfp_overlay / 'kustomization.yaml')} not found")
    cmd = [str(ensure_tools()["kubectl"]), "kustomize", str(src.kfp_overlay)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=paths.REPO)
    if proc.returncode != 0:
        raise RenderError("kfp", f"kubectl kustomize {rel(src.kfp_overlay)} failed:\n{proc.stderr.strip()}")
    return proc.stdout


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_kfp_tree(archive: Path = paths.KFP_ARCHIVE, tree: Path = paths.KFP_TREE) -> Path:
    """Extract the KFP manifests archive into build/kfp-2.17.0/ once (again when the archive changes)."""
    if not archive.is_file():
        raise RenderError("kfp", f"{archive} not found (the KFP 2.17.0 manifests archive of {rel(paths.SHARED)})")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    stamp = tree / ".extracted-from"
    if stamp.is_file() and stamp.read_text().strip() == digest:
        return tree
    with _lock(tree.parent / ".kfp-extract.lock"):
        if stamp.is_file() and stamp.read_text().strip() == digest:
            return tree
        tmp = tree.parent / f".{tree.name}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        with tarfile.open(archive) as tgz:
            tgz.extractall(tmp, filter="data")
        (tmp / ".extracted-from").write_text(digest + "\n")
        shutil.rmtree(tree, ignore_errors=True)
        os.replace(tmp, tree)
    return tree
