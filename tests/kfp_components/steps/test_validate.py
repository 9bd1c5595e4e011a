"""The validation rule, apart from MLflow, then against a real MLflow server: labels cannot buy a promotion."""

import json
import uuid

import numpy as np
import pandas as pd
import pytest

from kfp_components.steps.data import load_training_data
from kfp_components.steps.validate import decide
from tests.kfp_components.feedback_data import FEATURES, TOKEN, new_region, setosa_like, shifted_iris


def test_threshold_without_champion():
    assert decide(0.95, 0.9, None).accepted
    rejected = decide(0.85, 0.9, None)
    assert not rejected.accepted and "below min_accuracy 0.9000" in rejected.reason


def test_not_worse_than_champion():
    assert decide(0.95, 0.9, 0.95, champion_version="3").accepted
    worse = decide(0.93, 0.9, 0.97, champion_version="3")
    assert not worse.accepted and "worse than champion version 3" in worse.reason
    assert "on the trusted held-out rows" in worse.reason


def test_tolerance_allows_a_small_loss():
    assert decide(0.95, 0.9, 0.96, tolerance=0.02, champion_version="1").accepted
    assert not decide(0.95, 0.9, 0.98, tolerance=0.02, champion_version="1").accepted


@pytest.mark.parametrize("accuracy", [0.0, 0.5, 0.999])
def test_min_accuracy_above_one_rejects_everything(accuracy):
    assert not decide(accuracy, 1.01, None).accepted


def test_winning_on_feedback_does_not_make_up_for_the_trusted_rows():
    poisoned = decide(
        0.74, 0.0, 0.90, champion_version="1", candidate_feedback_accuracy=0.96, champion_feedback_accuracy=0.0
    )
    assert not poisoned.accepted
    assert "worse than champion version 1 (0.9000, tolerance 0.0000) on the trusted held-out rows" in poisoned.reason
    assert "on the held-out feedback rows it scores 0.9600, the champion 0.0000" in poisoned.reason


def test_held_out_feedback_rows_must_not_get_worse():
    worse = decide(
        0.95, 0.9, 0.95, champion_version="2", candidate_feedback_accuracy=0.70, champion_feedback_accuracy=0.80
    )
    assert not worse.accepted
    assert "worse than champion version 2 (0.8000, tolerance 0.0000) on the held-out feedback rows" in worse.reason
    # a tie passes: after an honest shift the champion may already be right on the new rows
    assert decide(
        0.95, 0.9, 0.95, champion_version="2", candidate_feedback_accuracy=1.0, champion_feedback_accuracy=1.0
    ).accepted
    assert decide(
        0.95,
        0.9,
        0.95,
        champion_version="2",
        candidate_feedback_accuracy=0.75,
        champion_feedback_accuracy=0.80,
        tolerance=0.05,
    ).accepted
    # without a champion there is nothing to compare the feedback rows with
    assert decide(0.95, 0.9, None, candidate_feedback_accuracy=0.1).accepted


def test_every_failed_rule_is_named():
    both = decide(
        0.70, 0.9, 0.90, champion_version="4", candidate_feedback_accuracy=0.5, champion_feedback_accuracy=0.6
    )
    assert "below min_accuracy 0.9000" in both.reason
    assert "on the trusted held-out rows" in both.reason and "on the held-out feedback rows" in both.reason


# --- against a real MLflow server -------------------------------------------------------------------


@pytest.fixture(scope="module")
def iris_champion(mlflow_server):
    """A champion trained on the bundled iris set by the real steps, as the first pipeline run makes it."""
    from kfp_components.steps.register import register_candidate
    from kfp_components.steps.train import TrainConfig, train_and_log
    from kfp_components.steps.validate import validate_candidate

    name = f"validate-{uuid.uuid4().hex[:8]}"
    data = load_training_data("")
    result = train_and_log(data.base, "target", mlflow_server, "retrain", TrainConfig(), run_tag=f"{name}-first")
    assert validate_candidate(result.mlflow_run_id, result.holdout, "target", mlflow_server, name, 0.9).accepted
    assert register_candidate(result.mlflow_run_id, mlflow_server, name) == "1"
    return name


def _retrain_with_feedback(mlflow_server, model_name, url, run_tag):
    """load_data -> train_model -> validate_model, as the pipeline runs them, with feedback from `url`."""
    from kfp_components.steps.train import TrainConfig, train_and_log
    from kfp_components.steps.validate import validate_candidate

    data = load_training_data("", feedback_url=url, token=TOKEN)
    result = train_and_log(
        data.base, "target", mlflow_server, "retrain", TrainConfig(), run_tag=run_tag, feedback=data.feedback
    )
    decision = validate_candidate(
        result.mlflow_run_id,
        result.holdout,
        "target",
        mlflow_server,
        model_name,
        0.9,
        feedback_holdout=result.feedback_holdout,
    )
    return result, decision


def _load(mlflow_client, mlflow_run_id):
    import mlflow

    return mlflow.sklearn.load_model(mlflow_client.get_run(mlflow_run_id).data.tags["model_uri"])


def _accuracy(model, frame):
    return float((model.predict(frame[FEATURES]) == frame["target"]).mean())


def test_poisoned_feedback_cannot_buy_a_promotion(mlflow_server, mlflow_client, iris_champion, feedback_export):
    """The reported attack: 500 setosa-like rows labelled 2 posted as feedback, then a retrain."""
    import mlflow

    url = feedback_export.serve(setosa_like(500), [2] * 500)
    result, decision = _retrain_with_feedback(mlflow_server, iris_champion, url, f"{iris_champion}-poisoned")

    candidate = _load(mlflow_client, result.mlflow_run_id)
    champion = mlflow.sklearn.load_model(f"models:/{iris_champion}/1")
    fresh_setosa = pd.DataFrame(setosa_like(200, seed=99), columns=FEATURES)
    assert (candidate.predict(fresh_setosa) == 2).mean() > 0.9  # the poison took
    assert (champion.predict(fresh_setosa) == 0).all()
    # what the old gate measured: all held-out rows together, the poisoned ones included. There the
    # candidate wins on its own labels, as reported (0.955 against 0.179).
    everything = pd.concat([result.holdout, result.feedback_holdout], ignore_index=True)
    assert _accuracy(candidate, everything) > 0.85 > 0.3 > _accuracy(champion, everything)

    assert not decision.accepted
    assert "worse than champion version 1" in decision.reason and "on the trusted held-out rows" in decision.reason
    run = mlflow_client.get_run(result.mlflow_run_id)
    assert run.data.tags["validation_decision"] == "rejected"
    assert run.data.tags["validation_reason"] == decision.reason
    scores = json.loads(run.data.tags["validation_scores"])
    assert scores["champion_version"] == "1"
    assert scores["trusted"]["rows"] == len(result.holdout)
    assert scores["feedback"]["rows"] == len(result.feedback_holdout)
    assert scores["trusted"]["candidate"] < scores["trusted"]["champion"]
    assert scores["feedback"]["candidate"] > 0.9 and scores["feedback"]["champion"] < 0.1
    metrics = run.data.metrics
    assert metrics["validation_trusted_accuracy"] == pytest.approx(scores["trusted"]["candidate"])
    assert metrics["validation_champion_trusted_accuracy"] == pytest.approx(scores["trusted"]["champion"])
    assert metrics["validation_feedback_accuracy"] == pytest.approx(scores["feedback"]["candidate"])
    assert metrics["validation_champion_feedback_accuracy"] == pytest.approx(scores["feedback"]["champion"])
    # nothing is promoted: the champion stays
    assert mlflow_client.get_model_version_by_alias(iris_champion, "champion").version == "1"


def _honest_shift(champion):
    rows, labels = shifted_iris(300, seed=11)  # tests/serving's loop-settles data: true labels
    return rows, labels


def _new_region(champion):
    rows = new_region()  # make e2e's data: labels of a class the champion does not predict there
    predicted = champion.predict(pd.DataFrame(rows, columns=FEATURES))
    return rows, (predicted.astype(int) + 1) % 3


@pytest.mark.parametrize("feedback", [_honest_shift, _new_region], ids=["shift-true-labels", "e2e-new-region"])
def test_honest_feedback_gets_a_retrain_accepted(
    mlflow_server, mlflow_client, iris_champion, feedback_export, feedback
):
    """The loop settles: a retrain on honest labels of shifted traffic still passes the gate."""
    import mlflow

    champion = mlflow.sklearn.load_model(f"models:/{iris_champion}/1")
    rows, labels = feedback(champion)
    url = feedback_export.serve(rows, labels)
    result, decision = _retrain_with_feedback(mlflow_server, iris_champion, url, f"{iris_champion}-{feedback.__name__}")
    assert decision.accepted, decision.reason
    assert len(result.feedback_holdout) > 5
    assert decision.candidate_accuracy >= decision.champion_accuracy
    assert decision.candidate_feedback_accuracy > decision.champion_feedback_accuracy
    run = mlflow_client.get_run(result.mlflow_run_id)
    assert run.data.tags["validation_decision"] == "accepted"
    scores = json.loads(run.data.tags["validation_scores"])
    assert scores["feedback"]["candidate"] == pytest.approx(decision.candidate_feedback_accuracy)
    assert np.isclose(run.data.metrics["feedback_accuracy"], decision.candidate_feedback_accuracy)
    # the drift reference (training features) holds the feedback's training rows, and no other column
    reference = pd.read_csv(
        mlflow.artifacts.download_artifacts(run_id=result.mlflow_run_id, artifact_path="drift/reference.csv")
    )
    assert list(reference.columns) == FEATURES
    assert len(reference) == int(run.data.params["train_rows"])
    assert int(run.data.params["feedback_train_rows"]) + int(run.data.params["feedback_holdout_rows"]) == len(rows)


# --- how the models are judged: verified ONNX copies, else the estimators -----------------------------

VALIDATE_IN_A_FRESH_PROCESS = """
import json, sys
import pandas as pd
from kfp_components.steps.validate import validate_candidate
decision = validate_candidate(sys.argv[1], pd.read_csv(sys.argv[2]), "target", sys.argv[3], sys.argv[4], 0.9)
heavy = sorted(m for m in ("sklearn", "skops", "mlflow", "skl2onnx") if m in sys.modules)
print(json.dumps({"accepted": decision.accepted, "candidate": decision.candidate_accuracy,
                  "champion": decision.champion_accuracy, "heavy": heavy}))
"""


@pytest.fixture(scope="module")
def candidate(mlflow_server, iris_champion, tmp_path_factory):
    """A second model trained on the bundled iris set (another forest), its held-out rows in a CSV."""
    from kfp_components.steps.train import TrainConfig, train_and_log

    data = load_training_data("")
    cfg = TrainConfig(n_estimators=7, random_state=3)
    result = train_and_log(data.base, "target", mlflow_server, "retrain", cfg, run_tag=f"{iris_champion}-small")
    path = tmp_path_factory.mktemp("holdout") / "holdout.csv"
    result.holdout.to_csv(path, index=False)
    return result, path


def _sklearn_accuracy(model_uri, holdout):
    import mlflow

    model = mlflow.sklearn.load_model(model_uri)
    return float((model.predict(holdout[FEATURES]) == holdout["target"]).mean())


def test_verified_onnx_copies_are_judged_without_scikit_learn_or_the_mlflow_client(
    mlflow_server, mlflow_client, iris_champion, candidate
):
    """The step's process imports neither scikit-learn, skops nor mlflow, and scores both models as
    their estimators score them on the same held-out rows."""
    import subprocess
    import sys

    result, holdout_csv = candidate
    assert mlflow_client.get_run(result.mlflow_run_id).data.tags["onnx_parity"] == "true"
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            VALIDATE_IN_A_FRESH_PROCESS,
            result.mlflow_run_id,
            str(holdout_csv),
            mlflow_server,
            iris_champion,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    judged = json.loads(out.stdout.strip().splitlines()[-1])
    assert judged["heavy"] == []
    holdout = pd.read_csv(holdout_csv)
    model_uri = mlflow_client.get_run(result.mlflow_run_id).data.tags["model_uri"]
    assert judged["candidate"] == pytest.approx(_sklearn_accuracy(model_uri, holdout))
    assert judged["champion"] == pytest.approx(_sklearn_accuracy(f"models:/{iris_champion}/1", holdout))


def test_a_model_without_a_verified_copy_is_judged_by_its_estimator(
    mlflow_server, mlflow_client, iris_champion, candidate
):
    from kfp_components.steps.validate import validate_candidate

    result, holdout_csv = candidate
    holdout = pd.read_csv(holdout_csv)
    mlflow_client.set_tag(result.mlflow_run_id, "onnx_parity", "false")
    try:
        decision = validate_candidate(result.mlflow_run_id, holdout, "target", mlflow_server, iris_champion, 0.0)
    finally:
        mlflow_client.set_tag(result.mlflow_run_id, "onnx_parity", "true")
    model_uri = mlflow_client.get_run(result.mlflow_run_id).data.tags["model_uri"]
    assert decision.candidate_accuracy == pytest.approx(_sklearn_accuracy(model_uri, holdout))
    assert decision.champion_version == "1"
