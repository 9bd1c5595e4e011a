"""Registering through MLflow's REST API makes what `mlflow.register_model` makes: a READY version of
the run's logged model that the MLflow client loads, the alias on it, the run tagged; a retried step
registers nothing twice."""

import uuid

import pytest

from kfp_components.steps.data import load_training_data
from kfp_components.steps.register import register_candidate
from kfp_components.steps.train import TrainConfig, train_and_log


@pytest.fixture(scope="module")
def trained(mlflow_server):
    data = load_training_data("")
    return train_and_log(data.base, "target", mlflow_server, "retrain", TrainConfig(n_estimators=5), run_tag="reg")


def test_a_registered_version_is_the_runs_logged_model_and_the_champion(mlflow_server, mlflow_client, trained):
    import mlflow

    name = f"register-{uuid.uuid4().hex[:8]}"
    run_id = trained.mlflow_run_id
    assert register_candidate(run_id, mlflow_server, name, run_tag="reg-1") == "1"
    version = mlflow_client.get_model_version(name, "1")
    run = mlflow_client.get_run(run_id)
    assert version.status == "READY" and version.run_id == run_id
    assert version.source == run.data.tags["model_uri"] and version.source.startswith("models:/m-")
    assert version.tags == {"run_id": run_id, "retrain_run": "reg-1"}
    assert mlflow_client.get_model_version_by_alias(name, "champion").version == "1"
    assert run.data.tags["registered_version"] == "1"
    model = mlflow.sklearn.load_model(f"models:/{name}@champion")
    assert list(model.predict(trained.holdout.drop(columns="target").head(3))) == list(
        mlflow.sklearn.load_model(run.data.tags["model_uri"]).predict(trained.holdout.drop(columns="target").head(3))
    )

    assert register_candidate(run_id, mlflow_server, name) == "1"  # a retried step
    assert len(mlflow_client.search_model_versions(f"name='{name}'")) == 1


def test_the_next_run_becomes_the_next_version(mlflow_server, mlflow_client, trained):
    name = f"register-{uuid.uuid4().hex[:8]}"
    data = load_training_data("")
    other = train_and_log(data.base, "target", mlflow_server, "retrain", TrainConfig(n_estimators=3), run_tag="reg2")
    assert register_candidate(trained.mlflow_run_id, mlflow_server, name) == "1"
    assert register_candidate(other.mlflow_run_id, mlflow_server, name) == "2"
    assert mlflow_client.get_model_version_by_alias(name, "champion").version == "2"
