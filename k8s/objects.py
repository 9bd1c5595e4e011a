"""Small helpers over rendered Kubernetes objects (plain dicts)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

#: A rendered Kubernetes object, or a mapping inside one (YAML as loaded).
Obj = dict[str, Any]

try:  # libyaml is several times faster on the ~10k lines of the renders
    Loader = yaml.CSafeLoader
except AttributeError:  # pragma: no cover
    Loader = yaml.SafeLoader

WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet")


@dataclass
class Part:
    """One rendered file of build/k8s/: the objects of one component."""

    name: str
    namespace: str  # release namespace: the namespace of objects that do not name one
    docs: list[Obj]
    path: Path | None = None
    seconds: float = 0.0

    def ns(self, doc: Obj) -> str:
        return (doc.get("metadata") or {}).get("namespace") or self.namespace

    def label(self, doc: Obj) -> str:
        """The "Kind namespace/name" of `doc`, with the release namespace when it names none."""
        return f"{doc.get('kind')} {self.ns(doc)}/{(doc.get('metadata') or {}).get('name')}"

    def of_kind(self, *kinds: str) -> list[Obj]:
        return [d for d in self.docs if d.get("kind") in kinds]

    def get(self, kind: str, name: str, namespace: str | None = None) -> Obj | None:
        for d in self.docs:
            if (
                d.get("kind") == kind
                and d["metadata"].get("name") == name
                and (namespace is None or self.ns(d) == namespace)
            ):
                return d
        return None


def load_all(text: str) -> list[Obj]:
    return [d for d in yaml.load_all(text, Loader=Loader) if isinstance(d, dict) and d]


def embedded_objects(doc: Obj) -> Iterator[tuple[str, Obj]]:
    """Objects carried as YAML text inside a ConfigMap (the Airflow chart's pod_template_file.yaml,
    the Pod spec of every KubernetesExecutor task pod), as (label, object)."""
    if doc.get("kind") != "ConfigMap":
        return
    for key, text in (doc.get("data") or {}).items():
        if key.endswith("pod_template_file.yaml") and isinstance(text, str):
            for obj in load_all(text):
                if obj.get("kind") == "Pod":
                    yield f"{doc['metadata']['name']}/{key}", obj


def pod_spec(doc: Obj) -> Obj | None:
    kind = doc.get("kind")
    spec = doc.get("spec") or {}
    if kind == "Pod":
        return spec
    if kind in WORKLOADS:
        return (spec.get("template") or {}).get("spec")
    if kind == "CronJob":
        return ((spec.get("jobTemplate") or {}).get("spec", {}).get("template") or {}).get("spec")
    return None


def pod_labels(doc: Obj) -> Obj:
    kind = doc.get("kind")
    if kind == "Pod":
        return (doc.get("metadata") or {}).get("labels") or {}
    if kind in WORKLOADS:
        return ((doc.get("spec") or {}).get("template") or {}).get("metadata", {}).get("labels") or {}
    return {}


def workloads(part: Part, embedded: bool = True) -> Iterator[tuple[str, Obj, Obj]]:
    """(label, object, pod spec) of every object that runs pods, including embedded pod templates."""
    for doc in part.docs:
        spec = pod_spec(doc)
        if spec is not None:
            yield part.label(doc), doc, spec
        if embedded:
            for label, obj in embedded_objects(doc):
                yield f"Pod template {label}", obj, obj.get("spec") or {}


def containers(spec: Obj | None, init: bool = True) -> Iterator[tuple[Obj, bool]]:
    """(container, is_init) of a pod spec (none of None: an object that runs no pods)."""
    spec = spec or {}
    if init:
        for c in spec.get("initContainers") or []:
            yield c, True
    for c in spec.get("containers") or []:
        yield c, False
