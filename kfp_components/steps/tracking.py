"""Connecting to the MLflow tracking server, with a fast, clear failure when it is down, and reading
what the steps share through it (the champion, a run's model and features).

MLflow's client retries a dead server for minutes before it fails; a retrain step should instead say
at once which URL did not answer. The artifact paths, tags and the alias are the project's contract
(`driftloop.contract`): the serving app reads what these steps write.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import requests

from driftloop.contract import CHAMPION_ALIAS, MODEL_ARTIFACT, MODEL_URI_TAG
from kfp_components.steps.errors import StepError

# Tags the steps write on the candidate's MLflow run (read back by `kfp_components.outcome`; the
# serving app reads `feature_names`), besides the contract's MODEL_URI_TAG and ONNX_PARITY_TAG.
FEATURE_NAMES_TAG = "feature_names"  #: JSON list of the feature columns, in order
RETRAIN_RUN_TAG = "retrain_run"  #: the caller's run name (pipeline parameter run_tag); also on the model version
VALIDATION_DECISION_TAG = "validation_decision"  #: "accepted" | "rejected"
VALIDATION_REASON_TAG = "validation_reason"  #: every rule that failed, or why the candidate passed
VALIDATION_SCORES_TAG = "validation_scores"  #: JSON: candidate and champion accuracy on both held-out sets
REGISTERED_VERSION_TAG = "registered_version"  #: the model version made from the run

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.tracking import MlflowClient


def connect(mlflow_tracking_uri: str, timeout: float = 10.0) -> MlflowClient:
    """Check that the server answers, point the mlflow client at it and return an MlflowClient."""
    if not mlflow_tracking_uri:
        raise StepError(
            "mlflow_tracking_uri is empty: pass the MLflow tracking server URL (e.g. http://127.0.0.1:5000)"
        )
    if mlflow_tracking_uri.startswith(("http://", "https://")):
        try:
            resp = requests.get(f"{mlflow_tracking_uri.rstrip('/')}/health", timeout=timeout)
        except requests.RequestException as exc:
            raise StepError(f"MLflow tracking server at {mlflow_tracking_uri} is not reachable: {exc}") from exc
        if resp.status_code != 200:
            raise StepError(f"MLflow tracking server at {mlflow_tracking_uri} is not healthy: HTTP {resp.status_code}")
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(mlflow_tracking_uri)
    mlflow.set_registry_uri(mlflow_tracking_uri)
    return MlflowClient(tracking_uri=mlflow_tracking_uri, registry_uri=mlflow_tracking_uri)


def get_champion(client: MlflowClient, model_name: str) -> ModelVersion | None:
    """The model version behind alias `champion`, or None when the model or the alias does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(model_name, CHAMPION_ALIAS)
    except MlflowException as exc:
        if getattr(exc, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def run_feature_names(client: MlflowClient, mlflow_run_id: str) -> list[str] | None:
    """The feature columns the run's model was trained on (its `feature_names` tag), if recorded."""
    tag = client.get_run(mlflow_run_id).data.tags.get(FEATURE_NAMES_TAG)
    return json.loads(tag) if tag else None


def candidate_model_uri(client: MlflowClient, mlflow_run_id: str) -> str:
    """Where the run's model lives (`models:/m-...` in MLflow 3; `runs:/<id>/model` for older runs)."""
    tag: str | None = client.get_run(mlflow_run_id).data.tags.get(MODEL_URI_TAG)
    return tag or f"runs:/{mlflow_run_id}/{MODEL_ARTIFACT}"
