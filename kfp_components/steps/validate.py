"""Deciding whether a candidate may replace the champion.

Labels cannot buy a promotion: feedback (labelled rows posted to the serving app) trains the
candidate, but the candidate is judged first on the **trusted held-out rows**, the data set's own
held-out rows, which feedback never enters (`kfp_components.steps.train.split_with_feedback`):

1. its accuracy there must reach `min_accuracy`;
2. with a champion, it must not be worse than the champion there (by more than `tolerance`);
3. with a champion and held-out feedback rows, it must not be worse than the champion on those
   either (by more than `tolerance`): a retrain on new labels must not do worse on them than the
   model that never saw them. Ties pass, so a retrain after an honest shift whose labels the champion
   already gets right is still accepted (the loop settles: the new version brings the new drift
   reference).

Poisoned feedback can win rule 3 on its own poisoned labels, never rule 2. The decision, its reason
and the scores of candidate and champion on both sets are written to the candidate's MLflow run.

Each model is judged through its ONNX copy when its run says the copy predicts exactly as the
estimator (`onnx_parity=true`: checked by training on that run's own held-out rows) — the copy the
serving app serves — with onnxruntime and numpy: no scikit-learn, skops or MLflow client to import
(seconds per step). A model without a verified copy is loaded from its skops file through MLflow, as
before. Both ways read the same held-out rows.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from driftloop.contract import ONNX_ARTIFACT, ONNX_PARITY_TAG
from kfp_components.steps.data import feature_columns
from kfp_components.steps.errors import StepError
from kfp_components.steps.mlflow_rest import MlflowRest, run_tags
from kfp_components.steps.tracking import (
    VALIDATION_DECISION_TAG,
    VALIDATION_REASON_TAG,
    VALIDATION_SCORES_TAG,
    candidate_model_uri,
    connect,
    connect_rest,
    get_champion,
    run_feature_names,
)

logger = logging.getLogger(__name__)

TRUSTED = "the trusted held-out rows"
FEEDBACK = "the held-out feedback rows"


@dataclass
class Decision:
    accepted: bool
    reason: str
    candidate_accuracy: float  # on the trusted held-out rows
    champion_accuracy: float | None = None  # on the trusted held-out rows
    champion_version: str | None = None
    candidate_feedback_accuracy: float | None = None  # on the held-out feedback rows
    champion_feedback_accuracy: float | None = None

    def scores(self, trusted_rows: int | None = None, feedback_rows: int | None = None) -> dict[str, Any]:
        return {
            "trusted": {"rows": trusted_rows, "candidate": self.candidate_accuracy, "champion": self.champion_accuracy},
            "feedback": {
                "rows": feedback_rows,
                "candidate": self.candidate_feedback_accuracy,
                "champion": self.champion_feedback_accuracy,
            },
            "champion_version": self.champion_version,
        }


def decide(
    candidate_accuracy: float,
    min_accuracy: float,
    champion_accuracy: float | None,
    tolerance: float = 0.0,
    champion_version: str | None = None,
    candidate_feedback_accuracy: float | None = None,
    champion_feedback_accuracy: float | None = None,
) -> Decision:
    """The rule itself, free of MLflow. `candidate_accuracy`/`champion_accuracy` are on the trusted
    held-out rows; the feedback pair on the held-out feedback rows (None when there are none)."""

    def decision(accepted: bool, reason: str) -> Decision:
        return Decision(
            accepted,
            reason,
            candidate_accuracy,
            champion_accuracy,
            champion_version,
            candidate_feedback_accuracy,
            champion_feedback_accuracy,
        )

    # the feedback pair, when both are known and there is a champion to compare with
    feedback_pair = (
        None
        if champion_accuracy is None or candidate_feedback_accuracy is None or champion_feedback_accuracy is None
        else (candidate_feedback_accuracy, champion_feedback_accuracy)
    )
    failures = []  # every rule that fails is named, in the order of the rules
    if candidate_accuracy < min_accuracy:
        failures.append(f"accuracy {candidate_accuracy:.4f} on {TRUSTED} is below min_accuracy {min_accuracy:.4f}")
    if champion_accuracy is not None and candidate_accuracy < champion_accuracy - tolerance:
        failures.append(
            f"accuracy {candidate_accuracy:.4f} is worse than champion version {champion_version} "
            f"({champion_accuracy:.4f}, tolerance {tolerance:.4f}) on {TRUSTED} (the data set's own, "
            f"never feedback)"
        )
    feedback_worse = feedback_pair is not None and feedback_pair[0] < feedback_pair[1] - tolerance
    if feedback_pair is not None and feedback_worse:
        failures.append(
            f"accuracy {feedback_pair[0]:.4f} is worse than champion version "
            f"{champion_version} ({feedback_pair[1]:.4f}, tolerance {tolerance:.4f}) on {FEEDBACK}"
        )
    if failures:
        if feedback_pair is not None and not feedback_worse:  # e.g. poison: the candidate wins on its own labels
            failures.append(f"on {FEEDBACK} it scores {feedback_pair[0]:.4f}, the champion {feedback_pair[1]:.4f}")
        return decision(False, "; ".join(failures))
    if champion_accuracy is not None:
        against = f"; champion version {champion_version} scores {champion_accuracy:.4f} on {TRUSTED}"
        if feedback_pair is not None:
            against += f"; on {FEEDBACK} {feedback_pair[0]:.4f} vs champion {feedback_pair[1]:.4f}"
        else:
            against += "; no held-out feedback rows"
    else:
        against = "; no champion to compare with"
    return decision(True, f"accuracy {candidate_accuracy:.4f} on {TRUSTED} >= min_accuracy {min_accuracy:.4f}{against}")


class Model(Protocol):
    def predict(self, features: pd.DataFrame) -> Any: ...


class OnnxModel:
    """A run's verified ONNX copy, predicting labels like the estimator it was converted from."""

    def __init__(self, payload: bytes):
        import onnxruntime as ort

        self.session = ort.InferenceSession(payload, providers=["CPUExecutionProvider"])
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise StepError(f"the ONNX copy has {len(inputs)} inputs; training writes one")
        self.input = inputs[0].name
        self.dtype = np.float64 if inputs[0].type == "tensor(double)" else np.float32

    def predict(self, features: pd.DataFrame) -> Any:
        labels = self.session.run(None, {self.input: features.to_numpy(dtype=self.dtype)})[0]
        return np.asarray(labels).ravel()


def load_model(api: MlflowRest, run: dict[str, Any] | None, sklearn_uri: str, tmp: Path) -> Model:
    """The model as the rule judges it: its run's ONNX copy when the run (REST JSON) verified it, else
    the estimator at `sklearn_uri`."""
    if run is not None and run_tags(run).get(ONNX_PARITY_TAG, "").lower() == "true":
        path = api.download_run_artifact(run, ONNX_ARTIFACT, tmp / run["info"]["run_id"])
        return OnnxModel(path.read_bytes())
    logger.info("No verified ONNX copy: loading the estimator %s", sklearn_uri)
    connect(api.base)
    import mlflow.sklearn

    model: Model = mlflow.sklearn.load_model(sklearn_uri)
    return model


def _accuracies(
    model: Model,
    holdout: pd.DataFrame,
    feedback_holdout: pd.DataFrame | None,
    label_column: str,
) -> tuple[float, float | None]:
    """The model's accuracy on the trusted held-out rows and on the held-out feedback rows (None without).
    Labels compare as text, as training's ONNX parity check compares them."""
    features = feature_columns(holdout, label_column)

    def accuracy(frame: pd.DataFrame) -> float:
        predicted = np.asarray(model.predict(frame[features])).astype(str)
        return float(np.mean(predicted == frame[label_column].to_numpy().astype(str)))

    return accuracy(holdout), None if feedback_holdout is None else accuracy(feedback_holdout)


def validate_candidate(
    mlflow_run_id: str,
    holdout: pd.DataFrame,
    label_column: str,
    mlflow_tracking_uri: str,
    model_name: str,
    min_accuracy: float,
    tolerance: float = 0.0,
    feedback_holdout: pd.DataFrame | None = None,
) -> Decision:
    """`holdout`: the trusted held-out rows (the data set's own); `feedback_holdout`: the held-out
    feedback rows, or None/empty when the candidate was trained without feedback."""
    if not 0.0 <= min_accuracy <= 1.01:
        raise StepError(f"min_accuracy={min_accuracy}: must be between 0 and 1 (values above 1 reject every candidate)")
    if tolerance < 0:
        raise StepError(f"tolerance={tolerance}: must not be negative")
    if holdout.empty:
        raise StepError("the trusted held-out set is empty: nothing to judge the candidate on")
    api = connect_rest(mlflow_tracking_uri)
    features = feature_columns(holdout, label_column)
    if feedback_holdout is not None and not feedback_holdout.empty:
        if list(feedback_holdout.columns) != list(holdout.columns):
            raise StepError(
                f"held-out feedback columns {list(feedback_holdout.columns)} differ from the trusted "
                f"held-out columns {list(holdout.columns)}"
            )
    else:
        feedback_holdout = None
    with tempfile.TemporaryDirectory(prefix="validate-") as tmp:
        run = api.get_run(mlflow_run_id)
        candidate = load_model(api, run, candidate_model_uri(run), Path(tmp))
        candidate_accuracy, candidate_feedback_accuracy = _accuracies(
            candidate, holdout, feedback_holdout, label_column
        )

        champion_accuracy: float | None = None
        champion_feedback_accuracy: float | None = None
        champion = get_champion(api, model_name)
        champion_run = api.get_run(champion["run_id"]) if champion and champion.get("run_id") else None
        champion_features = run_feature_names(champion_run) if champion_run else None
        if champion is not None and champion_features is not None and champion_features != features:
            logger.warning(
                "Champion version %s uses features %s, the candidate %s: compared against min_accuracy only",
                champion["version"],
                champion_features,
                features,
            )
            champion = None
        elif champion is not None:
            try:
                champion_uri = f"models:/{model_name}/{champion['version']}"
                champion_model = load_model(api, champion_run, champion_uri, Path(tmp))
            except Exception as exc:
                raise StepError(
                    f"champion {model_name} version {champion['version']} cannot be loaded to compare with: {exc}"
                ) from exc
            champion_accuracy, champion_feedback_accuracy = _accuracies(
                champion_model, holdout, feedback_holdout, label_column
            )

    decision = decide(
        candidate_accuracy,
        min_accuracy,
        champion_accuracy,
        tolerance,
        str(champion["version"]) if champion is not None else None,
        candidate_feedback_accuracy,
        champion_feedback_accuracy,
    )
    feedback_rows = 0 if feedback_holdout is None else len(feedback_holdout)
    api.set_tag(mlflow_run_id, VALIDATION_DECISION_TAG, "accepted" if decision.accepted else "rejected")
    api.set_tag(mlflow_run_id, VALIDATION_REASON_TAG, decision.reason)
    api.set_tag(
        mlflow_run_id, VALIDATION_SCORES_TAG, json.dumps(decision.scores(len(holdout), feedback_rows), sort_keys=True)
    )
    scores = {
        "validation_trusted_accuracy": candidate_accuracy,
        "validation_champion_trusted_accuracy": champion_accuracy,
        "champion_accuracy": champion_accuracy,  # kept for dashboards made before the feedback split
        "validation_feedback_accuracy": candidate_feedback_accuracy,
        "validation_champion_feedback_accuracy": champion_feedback_accuracy,
    }
    api.log_metrics(mlflow_run_id, {name: value for name, value in scores.items() if value is not None})
    logger.info("Validation %s: %s", "PASSED" if decision.accepted else "FAILED", decision.reason)
    return decision
