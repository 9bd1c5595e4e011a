"""Registering an accepted candidate and moving the `champion` alias to it (aliases, not the
deprecated stages). A retried step finds the version it already made for the same run."""
from __future__ import annotations

from kfp_components.steps.tracking import CHAMPION_ALIAS, candidate_model_uri, connect


def register_candidate(run_id: str, mlflow_uri: str, model_name: str, run_tag: str = "") -> str:
    client = connect(mlflow_uri)
    import mlflow
    from mlflow.exceptions import MlflowException

    existing = []
    try:
        existing = client.search_model_versions(f"name='{model_name}' and run_id='{run_id}'")
    except MlflowException:
        existing = []
    if existing:
        version = str(max(int(v.version) for v in existing))
        print(f"Run {run_id} is already registered as {model_name} version {version}")
    else:
        result = mlflow.register_model(candidate_model_uri(client, run_id), model_name,
                                       tags={"run_id": run_id, "retrain_run": run_tag})
        version = str(result.version)
    client.set_registered_model_alias(model_name, CHAMPION_ALIAS, version)
    client.set_tag(run_id, "registered_version", version)
    print(f"Registered {model_name} version {version}; alias '{CHAMPION_ALIAS}' now points to it")
    return version
