"""The committed compiled pipeline is what `make compile` produces from the code."""
from pathlib import Path

import yaml

from kfp_components.compile import COMPILED_PIPELINE, compile_pipeline


def test_committed_yaml_equals_fresh_compile(tmp_path: Path):
    fresh = compile_pipeline(tmp_path / "fresh.yaml")
    assert COMPILED_PIPELINE.read_text() == fresh.read_text(), (
        "kfp_components/retrain_pipeline.yaml is stale: run `make compile` and commit it")


def test_compiled_pipeline_shape():
    spec = yaml.safe_load(COMPILED_PIPELINE.read_text())
    assert spec["pipelineInfo"]["name"] == "ml-retrain-pipeline"
    tasks = spec["root"]["dag"]["tasks"]
    assert {"load-data", "train-model", "validate-model"} <= set(tasks)
    # register and deploy sit under the dsl.If branch on the validation result
    condition = [t for t in tasks.values() if "triggerPolicy" in t]
    assert condition and "validate-model" in condition[0]["triggerPolicy"]["condition"]
    # feedback travels apart from the data set: load_data -> train_model -> validate_model
    train_inputs = tasks["train-model"]["inputs"]["artifacts"]
    assert train_inputs["feedback"]["taskOutputArtifact"] == {"outputArtifactKey": "feedback", "producerTask": "load-data"}
    validate_inputs = tasks["validate-model"]["inputs"]["artifacts"]
    assert validate_inputs["feedback_holdout"]["taskOutputArtifact"]["producerTask"] == "train-model"
    assert validate_inputs["holdout"]["taskOutputArtifact"]["outputArtifactKey"] == "holdout"
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert {"data_uri", "model_name", "min_accuracy", "deploy_target", "mlflow_uri", "run_tag"} <= set(params)
    assert params["model_name"]["defaultValue"] == "iris-model"


def test_components_install_nothing_at_run_time():
    text = COMPILED_PIPELINE.read_text()
    assert "pip install" not in text
