"""What became of a retrain: read back from MLflow, where the steps record their decisions, so that
`make retrain`, the Airflow DAG and the e2e test learn the outcome the same way on every backend.

The local runner (`kfp_components.run_local`) writes this outcome as a JSON file for the Airflow local
backend; on a KFP API server the DAG looks it up here by the run's name (MLflow tag `retrain_run`)."""

from __future__ import annotations

from typing import Any


def find_outcome(mlflow_tracking_uri: str, run_tag: str) -> dict[str, Any]:
    """The training run tagged `retrain_run=run_tag`: its decision, reason and registered version.

    `mlflow_run_id` is the MLflow training run's id."""
    from kfp_components.steps.mlflow_rest import run_metrics, run_tags
    from kfp_components.steps.tracking import connect_rest

    runs = connect_rest(mlflow_tracking_uri).search_runs(f"tags.retrain_run = '{run_tag}'")
    if not runs:
        return {
            "run_tag": run_tag,
            "mlflow_run_id": None,
            "decision": "unknown",
            "reason": f"no MLflow run is tagged retrain_run={run_tag!r}",
            "registered_version": None,
        }
    run = runs[0]
    tags = run_tags(run)
    return {
        "run_tag": run_tag,
        "mlflow_run_id": run["info"]["run_id"],
        "decision": tags.get("validation_decision", "unknown"),
        "reason": tags.get("validation_reason", ""),
        "registered_version": tags.get("registered_version"),
        "accuracy": run_metrics(run).get("accuracy"),
    }
