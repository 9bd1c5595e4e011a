"""Where things are: the repository, its build directory, the upstream packages in ../shared/k8s/."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: Upstream charts and manifests (never copied into the repository). Override: $DRIFTLOOP_SHARED_K8S.
SHARED = Path(os.environ.get("DRIFTLOOP_SHARED_K8S") or REPO.parent / "shared" / "k8s")
BUILD = REPO / "build"
OUT = BUILD / "k8s"
VALUES = REPO / "helm-values"

AIRFLOW_CHART = SHARED / "airflow-1.22.0.tgz"
MLFLOW_CHART = SHARED / "mlflow-1.11.5.tgz"
KFP_ARCHIVE = SHARED / "kfp-2.17.0-offline.tgz"
#: The archive is extracted here; k8s/kfp/kustomization.yaml references this fixed path.
KFP_TREE = BUILD / "kfp-2.17.0"
KFP_OVERLAY = REPO / "k8s" / "kfp"
SERVING_CHART = REPO / "serving" / "chart"


def rel(path: Path) -> str:
    """`path` relative to the repository when it is inside it (for messages)."""
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)
