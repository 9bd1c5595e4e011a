"""Fixtures for pipeline tests: the serving app's feedback export and an MLflow client of the session's
MLflow server (the runner of the compiled pipeline is in test_run_local.py, its only user)."""

import pytest


@pytest.fixture
def feedback_export():
    """The serving app's feedback export as load_data fetches it; `.serve(rows, labels)` returns its URL."""
    from tests.kfp_components.feedback_data import FeedbackExport

    export = FeedbackExport()
    yield export
    export.close()


@pytest.fixture
def mlflow_client(mlflow_server):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
