"""The compiled pipeline on KFP's real local runner against a real MLflow server."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from sklearn.datasets import load_wine

from kfp_components.steps.train import TrainConfig, train_and_log
from kfp_components.steps.validate import validate_candidate
from tests.kfp_components.feedback_data import TOKEN, setosa_like

REPO = Path(__file__).resolve().parents[2]
MODEL = "pipeline-iris"


def champion(client, name):
    return client.get_model_version_by_alias(name, "champion")


@pytest.fixture
def run_pipeline(mlflow_server, tmp_path):
    """Run the committed compiled YAML once with run_local; returns (exit code, outcome dict, output).

    The outcome is the JSON file run_local writes (--outcome-file), never a line of its output."""

    def _run(**params):
        params.setdefault("mlflow_tracking_uri", mlflow_server)
        params.setdefault("deploy_target", "none")
        outcome_file = tmp_path / "outcome.json"
        outcome_file.unlink(missing_ok=True)
        argv = [
            sys.executable,
            "-m",
            "kfp_components.run_local",
            "--pipeline-root",
            str(tmp_path / "kfp"),
            "--outcome-file",
            str(outcome_file),
        ]
        for name, value in params.items():
            argv += ["--param", f"{name}={value}"]
        proc = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=600)
        outcome = json.loads(outcome_file.read_text()) if outcome_file.exists() else None
        return proc.returncode, outcome, proc.stdout + proc.stderr

    return _run


@pytest.fixture(scope="module")
def first_run(request):
    """Shared by the tests below: the first full run of the pipeline for MODEL."""
    return {}


def test_full_run_registers_version_1_as_champion(run_pipeline, mlflow_client, first_run):
    # the committed YAML is the cluster's: it carries the kfp-kubernetes platform spec (Secret as env),
    # which the local runner loads and ignores (the steps inherit the caller's environment)
    from kfp import components

    from kfp_components.compile import COMPILED_PIPELINE

    platform = components.load_component_from_file(str(COMPILED_PIPELINE)).component_spec.platform_spec
    assert "secretAsEnv" in str(platform.platforms["kubernetes"])
    code, outcome, output = run_pipeline(model_name=MODEL, run_tag="it-full")
    assert code == 0, output[-3000:]
    assert "platform" not in output.lower() and "secret" not in output.lower(), output[-3000:]
    assert outcome["decision"] == "accepted" and outcome["registered_version"] == "1", outcome
    version = champion(mlflow_client, MODEL)
    assert version.version == "1" and version.tags["retrain_run"] == "it-full"
    run = mlflow_client.get_run(outcome["mlflow_run_id"])
    assert json.loads(run.data.tags["feature_names"]) == ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    artifacts = {a.path for a in mlflow_client.list_artifacts(outcome["mlflow_run_id"], "drift")}
    assert artifacts == {"drift/reference.csv"}
    assert run.data.tags["onnx_parity"] == "true"
    assert {"accuracy", "f1_weighted", "f1_class_0"} <= set(run.data.metrics)
    assert "registered_version" in run.data.tags
    first_run["mlflow_run_id"] = outcome["mlflow_run_id"]


def test_impossible_threshold_registers_nothing(run_pipeline, mlflow_client, first_run):
    if "mlflow_run_id" not in first_run:
        pytest.skip("needs the first full run")
    code, outcome, output = run_pipeline(model_name=MODEL, min_accuracy=1.01, run_tag="it-strict")
    assert code == 0, output[-3000:]
    assert outcome["decision"] == "rejected" and "below min_accuracy 1.0100" in outcome["reason"]
    assert outcome["registered_version"] is None
    assert champion(mlflow_client, MODEL).version == "1"
    assert len(mlflow_client.search_model_versions(f"name='{MODEL}'")) == 1


def test_candidate_worse_than_champion_is_rejected(mlflow_server, mlflow_client, first_run):
    if "mlflow_run_id" not in first_run:
        pytest.skip("needs the first full run")
    frame = pd.read_csv(REPO / "kfp_components" / "data" / "iris.csv")
    stump = train_and_log(
        frame, "target", mlflow_server, "retrain", TrainConfig(n_estimators=1, max_depth=1), run_tag="it-stump"
    )
    decision = validate_candidate(stump.mlflow_run_id, stump.holdout, "target", mlflow_server, MODEL, min_accuracy=0.0)
    assert not decision.accepted
    assert "worse than champion version 1" in decision.reason
    assert mlflow_client.get_run(stump.mlflow_run_id).data.tags["validation_decision"] == "rejected"
    assert champion(mlflow_client, MODEL).version == "1"


def test_poisoned_feedback_is_rejected_by_the_pipeline(
    run_pipeline, mlflow_client, first_run, feedback_export, monkeypatch
):
    """load_data -> train_model -> validate_model keep feedback apart: 500 setosa-like rows labelled 2
    train the candidate, which then loses to the champion on the trusted held-out rows."""
    if "mlflow_run_id" not in first_run:
        pytest.skip("needs the first full run")
    monkeypatch.setenv("SERVING_ADMIN_TOKEN", TOKEN)  # load_data reads the export token from the environment
    url = feedback_export.serve(setosa_like(500), [2] * 500)
    code, outcome, output = run_pipeline(model_name=MODEL, feedback_url=url, run_tag="it-poisoned")
    assert code == 0, output[-3000:]
    assert "500 feedback rows" in output
    assert outcome["decision"] == "rejected", outcome
    assert "worse than champion version 1" in outcome["reason"] and "on the trusted held-out rows" in outcome["reason"]
    assert outcome["registered_version"] is None and champion(mlflow_client, MODEL).version == "1"
    run = mlflow_client.get_run(outcome["mlflow_run_id"])
    scores = json.loads(run.data.tags["validation_scores"])
    assert scores["trusted"]["rows"] == int(run.data.params["holdout_rows"])
    assert scores["feedback"]["rows"] == int(run.data.params["feedback_holdout_rows"]) > 50
    assert scores["trusted"]["candidate"] < scores["trusted"]["champion"]
    assert scores["feedback"]["candidate"] > scores["feedback"]["champion"]
    first = mlflow_client.get_run(first_run["mlflow_run_id"])
    assert run.data.params["holdout_rows"] == first.data.params["holdout_rows"]  # the same trusted rows
    evaluation = {a.path for a in mlflow_client.list_artifacts(outcome["mlflow_run_id"], "eval")}
    assert evaluation == {"eval/holdout.csv", "eval/feedback_holdout.csv"}


@pytest.mark.parametrize(
    "params, message",
    [
        ({"data_uri": "/no/such/file.csv"}, "data_uri '/no/such/file.csv': file not found"),
        (
            {"mlflow_tracking_uri": "http://127.0.0.1:9"},
            "MLflow tracking server at http://127.0.0.1:9 is not reachable",
        ),
    ],
)
def test_bad_input_fails_with_its_message_and_keeps_the_champion(
    run_pipeline, mlflow_client, first_run, params, message
):
    code, outcome, output = run_pipeline(model_name=MODEL, **params)
    assert code == 1, output[-3000:]
    assert outcome["state"] == "FAILED" and message in outcome["error"]
    if "mlflow_run_id" in first_run:
        assert champion(mlflow_client, MODEL).version == "1"


def test_bad_parameter_is_refused_before_running(mlflow_server):
    proc = subprocess.run(
        [os.sys.executable, "-m", "kfp_components.run_local", "--param", "min_accuracy=high"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert proc.returncode == 2 and "parameter 'min_accuracy' must be a number, got 'high'" in proc.stderr
    proc = subprocess.run(
        [os.sys.executable, "-m", "kfp_components.run_local", "--param", "colour=red"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert proc.returncode == 2 and "has no parameter(s) colour" in proc.stderr


def test_make_retrain_with_another_dataset(mlflow_server, mlflow_client, tmp_path):
    """Nothing assumes iris: 13 wine features, another model name, no deployment."""
    wine = load_wine(as_frame=True).frame
    data = tmp_path / "wine.csv"
    wine.to_csv(data, index=False)
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server, "STACK_DIR": str(tmp_path / "stack")}
    proc = subprocess.run(
        ["make", "retrain", f"DATA_URI={data}", "MODEL_NAME=other-model", "DEPLOY_TARGET=none", "MIN_ACCURACY=0.8"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "registered other-model version 1 as champion" in proc.stdout
    version = champion(mlflow_client, "other-model")
    from mlflow.models import get_model_info

    info = get_model_info(f"models:/other-model/{version.version}")
    assert [c.name for c in info.signature.inputs.inputs] == list(wine.columns[:-1])
    assert len(info.signature.inputs.inputs) == 13
