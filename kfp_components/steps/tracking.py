"""Connecting to the MLflow tracking server, with a fast, clear failure when it is down, and reading
what the steps share through it (the champion, a run's model and features). Training gets the MLflow
client (`connect`), the other steps the REST client (`connect_rest`, kfp_components/steps/mlflow_rest.py).

MLflow's client retries a dead server for minutes before it fails; a retrain step should instead say
at once which URL did not answer. The artifact paths, tags and the alias are the project's contract
(`driftloop.contract`): the serving app reads what these steps write.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import requests

from driftloop.contract import CHAMPION_ALIAS, MODEL_ARTIFACT, MODEL_URI_TAG
from kfp_components.steps.errors import StepError
from kfp_components.steps.mlflow_rest import MlflowRest, run_tags

# Tags the steps write on the candidate's MLflow run (read back by `kfp_components.outcome`; the
# serving app reads `feature_names`), besides the contract's MODEL_URI_TAG and ONNX_PARITY_TAG.
FEATURE_NAMES_TAG = "feature_names"  #: JSON list of the feature columns, in order
RETRAIN_RUN_TAG = "retrain_run"  #: the caller's run name (pipeline parameter run_tag); also on the model version
VALIDATION_DECISION_TAG = "validation_decision"  #: "accepted" | "rejected"
VALIDATION_REASON_TAG = "validation_reason"  #: every rule that failed, or why the candidate passed
VALIDATION_SCORES_TAG = "validation_scores"  #: JSON: candidate and champion accuracy on both held-out sets
REGISTERED_VERSION_TAG = "registered_version"  #: the model version made from the run

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient


def check_server(mlflow_tracking_uri: str, timeout: float = 10.0) -> None:
    """Fail at once, naming the URL, when the tracking server does not answer its /health."""
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


def connect(mlflow_tracking_uri: str, timeout: float = 10.0) -> MlflowClient:
    """Check that the server answers, point the mlflow client at it and return an MlflowClient
    (for training, which logs an MLflow model)."""
    check_server(mlflow_tracking_uri, timeout)
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(mlflow_tracking_uri)
    mlflow.set_registry_uri(mlflow_tracking_uri)
    return MlflowClient(tracking_uri=mlflow_tracking_uri, registry_uri=mlflow_tracking_uri)


def connect_rest(mlflow_tracking_uri: str, timeout: float = 10.0) -> MlflowRest:
    """Check that the server answers and return its REST client (for the steps that only read, tag
    and register: see kfp_components.steps.mlflow_rest for why)."""
    check_server(mlflow_tracking_uri, timeout)
    if not mlflow_tracking_uri.startswith(("http://", "https://")):
        raise StepError(f"mlflow_tracking_uri {mlflow_tracking_uri!r}: the steps need the tracking server's URL")
    return MlflowRest(mlflow_tracking_uri)


def get_champion(api: MlflowRest, model_name: str) -> dict[str, Any] | None:
    """The model version behind alias `champion` (REST JSON), or None when the model or the alias
    does not exist."""
    return api.version_by_alias(model_name, CHAMPION_ALIAS)


def run_feature_names(run: dict[str, Any]) -> list[str] | None:
    """The feature columns the run's model was trained on (its `feature_names` tag), if recorded."""
    tag = run_tags(run).get(FEATURE_NAMES_TAG)
    return json.loads(tag) if tag else None


def candidate_model_uri(run: dict[str, Any]) -> str:
    """Where the run's model lives (`models:/m-...` in MLflow 3; `runs:/<id>/model` for older runs)."""
    tag = run_tags(run).get(MODEL_URI_TAG)
    return tag or f"runs:/{run['info']['run_id']}/{MODEL_ARTIFACT}"
