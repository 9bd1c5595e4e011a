"""Connecting to the MLflow tracking server, with a fast, clear failure when it is down.

MLflow's client retries a dead server for minutes before it fails; a retrain step should instead say
at once which URL did not answer.
"""
from __future__ import annotations

import json

import requests

from kfp_components.steps.errors import StepError

CHAMPION_ALIAS = "champion"
MODEL_ARTIFACT = "model"
MODEL_URI_TAG = "model_uri"
REFERENCE_ARTIFACT = "drift/reference.csv"
ONNX_ARTIFACT = "onnx/model.onnx"
SKOPS_TRUSTED_TYPES = ["sklearn.tree._tree.Tree"]


def connect(mlflow_uri: str, timeout: float = 10.0):
    """Check that the server answers, point the mlflow client at it and return an MlflowClient."""
    if not mlflow_uri:
        raise StepError("mlflow_uri is empty: pass the MLflow tracking server URL (e.g. http://127.0.0.1:5000)")
    if mlflow_uri.startswith(("http://", "https://")):
        try:
            resp = requests.get(f"{mlflow_uri.rstrip('/')}/health", timeout=timeout)
        except requests.RequestException as exc:
            raise StepError(f"MLflow tracking server at {mlflow_uri} is not reachable: {exc}") from exc
        if resp.status_code != 200:
            raise StepError(f"MLflow tracking server at {mlflow_uri} is not healthy: HTTP {resp.status_code}")
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(mlflow_uri)
    mlflow.set_registry_uri(mlflow_uri)
    return MlflowClient(tracking_uri=mlflow_uri, registry_uri=mlflow_uri)


def get_champion(client, model_name: str):
    """The model version behind alias `champion`, or None when the model or the alias does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(model_name, CHAMPION_ALIAS)
    except MlflowException as exc:
        if getattr(exc, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def run_feature_names(client, run_id: str) -> list[str] | None:
    tag = client.get_run(run_id).data.tags.get("feature_names")
    return json.loads(tag) if tag else None


def candidate_model_uri(client, run_id: str) -> str:
    """Where the run's model lives (`models:/m-...` in MLflow 3; `runs:/<id>/model` for older runs)."""
    return client.get_run(run_id).data.tags.get(MODEL_URI_TAG) or f"runs:/{run_id}/{MODEL_ARTIFACT}"
