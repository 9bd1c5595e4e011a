"""The committed compiled pipeline is what `make compile` produces from the code."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kfp_components.compile import COMPILED_PIPELINE, compile_pipeline

REPO = Path(__file__).resolve().parents[2]


def test_committed_yaml_equals_fresh_compile(tmp_path: Path):
    fresh = compile_pipeline(tmp_path / "fresh.yaml")
    assert COMPILED_PIPELINE.read_text() == fresh.read_text(), (
        "kfp_components/retrain_pipeline.yaml is stale: run `make compile` and commit it"
    )


def test_compiled_pipeline_shape():
    spec, _platform = yaml.safe_load_all(COMPILED_PIPELINE.read_text())
    assert spec["pipelineInfo"]["name"] == "ml-retrain-pipeline"
    tasks = spec["root"]["dag"]["tasks"]
    assert {"load-data", "train-model", "validate-model"} <= set(tasks)
    # register and deploy sit under the dsl.If branch on the validation result
    condition = [t for t in tasks.values() if "triggerPolicy" in t]
    assert condition and "validate-model" in condition[0]["triggerPolicy"]["condition"]
    # feedback travels apart from the data set: load_data -> train_model -> validate_model
    train_inputs = tasks["train-model"]["inputs"]["artifacts"]
    assert train_inputs["feedback"]["taskOutputArtifact"] == {
        "outputArtifactKey": "feedback",
        "producerTask": "load-data",
    }
    validate_inputs = tasks["validate-model"]["inputs"]["artifacts"]
    assert validate_inputs["feedback_holdout"]["taskOutputArtifact"]["producerTask"] == "train-model"
    assert validate_inputs["holdout"]["taskOutputArtifact"]["outputArtifactKey"] == "holdout"
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert {"data_uri", "model_name", "min_accuracy", "deploy_target", "mlflow_tracking_uri", "run_tag"} <= set(params)
    assert params["model_name"]["defaultValue"] == "iris-model"


def test_components_install_nothing_at_run_time():
    text = COMPILED_PIPELINE.read_text()
    assert "pip install" not in text


MLFLOW_LOGIN = {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"}
SECRET_ENV = {  # task -> the keys of the pipeline Secret it gets as environment variables of the same names
    "load-data": {"SERVING_ADMIN_TOKEN"},  # feedback export
    "train-model": MLFLOW_LOGIN,
    "validate-model": MLFLOW_LOGIN,
    "register-model": MLFLOW_LOGIN,
    "deploy-model": {"SERVING_ADMIN_TOKEN"},  # POST /model/reload
}


def secret_env_by_task(path: Path) -> dict[str, list[dict]]:
    """task name -> the secretAsEnv entries of its executor in the kubernetes platform spec."""
    docs = list(yaml.safe_load_all(path.read_text()))
    assert len(docs) == 2, "expected the PipelineSpec and a PlatformSpec document"
    spec, platform = docs
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    dags = [spec["root"]["dag"]] + [c["dag"] for c in spec["components"].values() if "dag" in c]
    out = {}
    for dag in dags:
        for task_name, task in dag["tasks"].items():
            label = spec["components"][task["componentRef"]["name"]].get("executorLabel")
            if label:
                out[task_name] = executors.get(label, {}).get("secretAsEnv", [])
    return out


def _compile_cli(output: Path, **env) -> Path:
    environ = {k: v for k, v in os.environ.items() if k not in ("PIPELINE_SECRET", "COMPONENT_IMAGE")}
    proc = subprocess.run(
        [sys.executable, "-m", "kfp_components.compile", "--output", str(output)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**environ, **env},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return output


@pytest.mark.parametrize("secret", [None, "other-secret"])
def test_steps_read_their_credentials_from_the_pipeline_secret(tmp_path: Path, secret):
    """kfp-kubernetes `use_secret_as_env`: each step's pod gets the keys it uses from the Secret named at
    compile time (PIPELINE_SECRET, default driftloop-pipeline), never as pipeline parameters."""
    path = _compile_cli(tmp_path / "p.yaml", **({"PIPELINE_SECRET": secret} if secret else {}))
    name = secret or "driftloop-pipeline"
    by_task = secret_env_by_task(path)
    assert set(by_task) == set(SECRET_ENV)
    for task, keys in SECRET_ENV.items():
        [entry] = by_task[task]
        assert entry["secretNameParameter"] == {"runtimeValue": {"constant": name}}, task
        assert entry["secretName"] == name and entry["optional"] is False, task
        assert {m["secretKey"]: m["envVar"] for m in entry["keyToEnv"]} == {k: k for k in keys}, task
    if secret is None:
        assert path.read_text() == COMPILED_PIPELINE.read_text()
        assert secret_env_by_task(COMPILED_PIPELINE) == by_task
    params = yaml.safe_load_all(path.read_text()).__next__()["root"]["inputDefinitions"]["parameters"]
    assert not {p for p in params if "secret" in p.lower() or "token" in p.lower() or "password" in p.lower()}
