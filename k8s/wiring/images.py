"""images: every Airflow container, the task pod template and the executor's config use one image, the
project's (not the stock apache/airflow image)."""

from __future__ import annotations

import re

from k8s.objects import containers, pod_labels, workloads
from k8s.wiring.context import CheckResult, Context


def check_images(ctx: Context, result: CheckResult) -> None:
    """Every Airflow container (and the task pods) runs the project image: the stock apache/airflow image
    has neither the provider package nor dags/."""
    part = ctx.part("airflow")
    if part is None:
        result.problems.append("airflow.yaml was not rendered")
        return
    images: dict[str, list[str]] = {}
    for label, doc, spec in workloads(part):
        labels = pod_labels(doc)
        if labels.get("tier") != "airflow" or labels.get("component") == "statsd":
            continue
        for c, _ in containers(spec):
            images.setdefault(c.get("image", ""), []).append(f"{label} [{c['name']}]")
    cfg = next((d for d in part.of_kind("ConfigMap") if "airflow.cfg" in (d.get("data") or {})), None)
    if cfg is not None:
        text = cfg["data"]["airflow.cfg"]
        repo = re.search(r"^worker_container_repository\s*=\s*(\S+)", text, re.M)
        tag = re.search(r"^worker_container_tag\s*=\s*(\S+)", text, re.M)
        if repo and tag:
            images.setdefault(f"{repo.group(1)}:{tag.group(1)}", []).append(
                "airflow.cfg [kubernetes_executor] worker_container_repository/tag"
            )
    if len(images) > 1:
        result.problems.append(
            "airflow: the Airflow containers do not all run the same image: "
            + "; ".join(f"{img}: {', '.join(where)}" for img, where in images.items())
        )
    for img, where in images.items():
        if img.startswith(("apache/airflow:", "docker.io/apache/airflow:")):
            result.problems.append(
                f"airflow: {', '.join(where)} run the stock image {img}: use the project image "
                "built from k8s/airflow/Dockerfile (provider package + dags/), "
                "images.airflow and images.pod_template in helm-values/airflow.yaml"
            )
    if not result.problems and images:
        where = next(iter(images.values()))
        result.verified.append(
            f"airflow: {sum(1 for w in where if w.endswith(']'))} containers and the "
            f"executor's worker image use {next(iter(images))}"
        )
