"""Registering an accepted candidate and moving the `champion` alias to it (aliases, not the
deprecated stages). A retried step finds the version it already made for the same run."""

from __future__ import annotations

import logging

from driftloop.contract import CHAMPION_ALIAS
from kfp_components.steps.tracking import REGISTERED_VERSION_TAG, RETRAIN_RUN_TAG, candidate_model_uri, connect

logger = logging.getLogger(__name__)


def register_candidate(mlflow_run_id: str, mlflow_tracking_uri: str, model_name: str, run_tag: str = "") -> str:
    """Register the model of MLflow run `mlflow_run_id` as a version of `model_name` (once per run) and
    point alias `champion` at it; returns the version."""
    client = connect(mlflow_tracking_uri)
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        existing = [
            int(v.version) for v in client.search_model_versions(f"name='{model_name}' and run_id='{mlflow_run_id}'")
        ]
    except MlflowException:
        existing = []
    if existing:
        version = str(max(existing))
        logger.info("Run %s is already registered as %s version %s", mlflow_run_id, model_name, version)
    else:
        result = mlflow.register_model(
            candidate_model_uri(client, mlflow_run_id),
            model_name,
            tags={"run_id": mlflow_run_id, RETRAIN_RUN_TAG: run_tag},
        )
        version = str(result.version)
    client.set_registered_model_alias(model_name, CHAMPION_ALIAS, version)
    client.set_tag(mlflow_run_id, REGISTERED_VERSION_TAG, version)
    logger.info("Registered %s version %s; alias '%s' now points to it", model_name, version, CHAMPION_ALIAS)
    return version
