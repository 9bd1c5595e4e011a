"""Registering an accepted candidate and moving the `champion` alias to it (aliases, not the
deprecated stages). A retried step finds the version it already made for the same run.

Through MLflow's REST API (kfp_components/steps/mlflow_rest.py): the same calls `mlflow.register_model`
makes against a tracking server (create the registered model unless it exists, create the version from
the run's logged model, wait until it is READY), without importing the MLflow client."""

from __future__ import annotations

import logging

from driftloop.contract import CHAMPION_ALIAS
from kfp_components.steps.tracking import REGISTERED_VERSION_TAG, RETRAIN_RUN_TAG, candidate_model_uri, connect_rest

logger = logging.getLogger(__name__)

LOGGED_MODEL_PREFIX = "models:/m-"  #: an MLflow 3 logged model's URI: models:/<model_id>


def register_candidate(mlflow_run_id: str, mlflow_tracking_uri: str, model_name: str, run_tag: str = "") -> str:
    """Register the model of MLflow run `mlflow_run_id` as a version of `model_name` (once per run) and
    point alias `champion` at it; returns the version."""
    api = connect_rest(mlflow_tracking_uri)
    existing = [int(v["version"]) for v in api.search_versions(f"name='{model_name}' and run_id='{mlflow_run_id}'")]
    if existing:
        version = str(max(existing))
        logger.info("Run %s is already registered as %s version %s", mlflow_run_id, model_name, version)
    else:
        source = candidate_model_uri(api.get_run(mlflow_run_id))
        model_id = source.removeprefix("models:/") if source.startswith(LOGGED_MODEL_PREFIX) else None
        api.create_registered_model(model_name)
        created = api.create_version(
            model_name, source, mlflow_run_id, {"run_id": mlflow_run_id, RETRAIN_RUN_TAG: run_tag}, model_id
        )
        version = str(created["version"])
    api.set_alias(model_name, CHAMPION_ALIAS, version)
    api.set_tag(mlflow_run_id, REGISTERED_VERSION_TAG, version)
    logger.info("Registered %s version %s; alias '%s' now points to it", model_name, version, CHAMPION_ALIAS)
    return version
