"""Training a candidate and recording everything about it in one MLflow run: parameters, metrics,
the model with its signature, the drift reference (training features), the held-out splits, and an
ONNX copy that serving may use when it predicts exactly like the sklearn model.

Feedback rows train the candidate but never judge it on the trusted held-out set: that set is made
of the data set's own rows only. Held-out feedback rows form a second, separate held-out set."""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support
from sklearn.model_selection import train_test_split

from driftloop.contract import (
    MODEL_ARTIFACT,
    MODEL_URI_TAG,
    ONNX_ARTIFACT,
    ONNX_PARITY_TAG,
    REFERENCE_ARTIFACT,
    SKOPS_TRUSTED_TYPES,
)
from kfp_components.steps.data import feature_columns
from kfp_components.steps.errors import StepError
from kfp_components.steps.tracking import FEATURE_NAMES_TAG, RETRAIN_RUN_TAG, connect

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    n_estimators: int = 100
    max_depth: int = 0  # 0 means unlimited
    random_state: int = 42
    test_size: float = 0.2

    def check(self) -> None:
        if self.n_estimators < 1:
            raise StepError(f"n_estimators={self.n_estimators}: must be at least 1")
        if self.max_depth < 0:
            raise StepError(f"max_depth={self.max_depth}: must be 0 (unlimited) or positive")
        if not 0.05 <= self.test_size <= 0.5:
            raise StepError(f"test_size={self.test_size}: must be between 0.05 and 0.5")


@dataclass
class TrainResult:
    mlflow_run_id: str  # the MLflow run that holds the candidate
    metrics: dict[str, float]
    holdout: pd.DataFrame  # trusted: the data set's own held-out rows, never feedback
    feedback_holdout: pd.DataFrame  # held-out feedback rows (no rows without feedback)


@dataclass
class Splits:
    train: pd.DataFrame  # the data set's training rows followed by the feedback training rows
    holdout: pd.DataFrame  # trusted held-out rows: from the data set only
    feedback_train: pd.DataFrame
    feedback_holdout: pd.DataFrame


def row_buckets(frame: pd.DataFrame) -> np.ndarray:
    """A number in [0, 1) per row, from a hash of the row's content (features and label)."""
    hashed: np.ndarray = pd.util.hash_pandas_object(frame, index=False).to_numpy(dtype=np.uint64)
    return hashed.astype(np.float64) / float(2**64)


def split(frame: pd.DataFrame, label_column: str, cfg: TrainConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Held-out rows are chosen by a hash of their content, not by a random permutation.

    Retraining data grows (the data set is extended, feedback rows arrive), and a random split of the
    grown table would score the champion on rows it was trained on, so a better candidate could lose
    to it. With a content hash a row is held out for every model whose data contained it: champion
    and candidate are compared on rows neither has learned. Falls back to a seeded random split when
    the hash leaves the held-out set empty or the training set with a single class (tiny tables)."""
    holdout_mask = row_buckets(frame) < cfg.test_size
    train, holdout = frame[~holdout_mask], frame[holdout_mask]
    if len(holdout) and train[label_column].nunique() >= 2:
        return train, holdout
    labels = frame[label_column]
    stratify = labels if labels.value_counts().min() >= 2 else None
    try:
        train, holdout = train_test_split(
            frame, test_size=cfg.test_size, random_state=cfg.random_state, stratify=stratify
        )
    except ValueError:
        train, holdout = train_test_split(frame, test_size=cfg.test_size, random_state=cfg.random_state)
    return train, holdout


def align_feedback(base: pd.DataFrame, feedback: pd.DataFrame | None) -> pd.DataFrame:
    """Feedback with the base table's columns and dtypes, so that a feedback row with the same content
    as a base row hashes like it (CSV round trips may read 7.0 back as the integer 7)."""
    if feedback is None or feedback.empty:
        return base.iloc[0:0].copy()
    missing = [c for c in base.columns if c not in feedback.columns]
    if missing or len(feedback.columns) != len(base.columns):
        raise StepError(
            f"feedback columns {list(map(str, feedback.columns))} differ from the data set's {list(base.columns)}"
        )
    try:
        return feedback[list(base.columns)].astype(base.dtypes.to_dict()).reset_index(drop=True)
    except (TypeError, ValueError) as exc:
        raise StepError(
            f"feedback rows do not have the data set's column types {base.dtypes.astype(str).to_dict()}: {exc}"
        ) from exc


def split_with_feedback(
    base: pd.DataFrame, feedback: pd.DataFrame | None, label_column: str, cfg: TrainConfig
) -> Splits:
    """The data set's rows are split as by `split` (the trusted held-out set is exactly the one without
    feedback); feedback rows are split by the same content hash into training rows and a feedback
    held-out set, and never enter the trusted one. A feedback row that repeats a trusted held-out row
    (same features and label) is held out with the feedback: copies of the trusted rows cannot be
    posted into the training data to lift a candidate's trusted score."""
    base_train, holdout = split(base, label_column, cfg)
    feedback = align_feedback(base, feedback)
    if feedback.empty:
        return Splits(base_train, holdout, feedback, feedback)
    trusted = set(pd.util.hash_pandas_object(holdout, index=False).tolist())
    repeats = pd.util.hash_pandas_object(feedback, index=False).isin(trusted).to_numpy()
    held = (row_buckets(feedback) < cfg.test_size) | repeats
    feedback_train, feedback_holdout = feedback[~held], feedback[held]
    train = pd.concat([base_train, feedback_train], ignore_index=True) if len(feedback_train) else base_train
    return Splits(train, holdout, feedback_train, feedback_holdout)


def build_estimator(cfg: TrainConfig) -> RandomForestClassifier:
    return RandomForestClassifier(
        n_estimators=cfg.n_estimators,
        max_depth=cfg.max_depth or None,
        random_state=cfg.random_state,
        n_jobs=1,
    )


def evaluate(model: Any, features: pd.DataFrame, labels: pd.Series) -> dict[str, float]:
    predicted = model.predict(features)
    metrics = {
        "accuracy": float(accuracy_score(labels, predicted)),
        "f1_weighted": float(f1_score(labels, predicted, average="weighted", zero_division=0)),
    }
    classes = sorted(set(labels.tolist()) | set(predicted.tolist()), key=str)
    precision, recall, f1, _ = precision_recall_fscore_support(labels, predicted, labels=classes, zero_division=0)
    for cls, p, r, f in zip(classes, precision, recall, f1, strict=True):
        metrics[f"precision_class_{cls}"] = float(p)
        metrics[f"recall_class_{cls}"] = float(r)
        metrics[f"f1_class_{cls}"] = float(f)
    return metrics


def export_onnx(model: Any, holdout_features: pd.DataFrame) -> bytes | None:
    """The model as ONNX (float32 input named `input`, label and probability outputs), or None when
    conversion fails or any held-out prediction differs from the sklearn model's."""
    try:
        import onnxruntime as ort
        from skl2onnx import to_onnx

        sample = holdout_features.to_numpy(dtype=np.float32)
        onx = to_onnx(model, sample[:1], options={id(model): {"zipmap": False}}, target_opset=17)
        payload: bytes = onx.SerializeToString()
        session = ort.InferenceSession(payload, providers=["CPUExecutionProvider"])
        onnx_labels = session.run(None, {session.get_inputs()[0].name: sample})[0]
    except Exception as exc:  # conversion support varies by estimator: fall back to sklearn
        logger.warning("ONNX export skipped: %s", exc)
        return None
    expected = model.predict(holdout_features)
    if not np.array_equal(np.asarray(onnx_labels).astype(str), np.asarray(expected).astype(str)):
        logger.warning("ONNX export skipped: its predictions differ from the sklearn model on the held-out data")
        return None
    return payload


def _pip_requirements() -> list[str]:
    """Pinned explicitly: MLflow would otherwise load the model in a subprocess to infer them."""
    import cloudpickle
    import sklearn
    import skops

    return [
        f"scikit-learn=={sklearn.__version__}",
        f"numpy=={np.__version__}",
        f"skops=={skops.__version__}",
        f"cloudpickle=={cloudpickle.__version__}",
    ]


def _log_artifact(tmp: str, artifact: str, write: Callable[[Path], object]) -> None:
    """Log the file `write` makes as the artifact at path `artifact` of the active run (through `tmp`)."""
    import mlflow

    local = Path(tmp) / Path(artifact).name
    write(local)
    mlflow.log_artifact(str(local), Path(artifact).parent.as_posix())


def _csv(frame: pd.DataFrame) -> Callable[[Path], object]:
    return lambda path: frame.to_csv(path, index=False)


def train_and_log(
    frame: pd.DataFrame,
    label_column: str,
    mlflow_tracking_uri: str,
    experiment_name: str,
    cfg: TrainConfig,
    run_tag: str = "",
    source: str = "",
    feedback: pd.DataFrame | None = None,
) -> TrainResult:
    """Train on `frame` (the data set) plus the training share of `feedback`; metrics are measured on
    the trusted held-out rows (from `frame` only), `feedback_accuracy` on the held-out feedback rows."""
    cfg.check()
    connect(mlflow_tracking_uri)
    import mlflow
    from mlflow.models import infer_signature

    parts = split_with_feedback(frame, feedback, label_column, cfg)
    train, holdout, feedback_holdout = parts.train, parts.holdout, parts.feedback_holdout
    features = feature_columns(frame, label_column)
    x_train, y_train = train[features], train[label_column]
    x_hold, y_hold = holdout[features], holdout[label_column]

    model = build_estimator(cfg).fit(x_train, y_train)
    metrics = evaluate(model, x_hold, y_hold)
    if len(feedback_holdout):
        metrics["feedback_accuracy"] = float(
            accuracy_score(feedback_holdout[label_column], model.predict(feedback_holdout[features]))
        )
    held_out = pd.concat([x_hold, feedback_holdout[features]], ignore_index=True) if len(feedback_holdout) else x_hold
    onnx_payload = export_onnx(model, held_out)

    mlflow.set_experiment(experiment_name)
    tags = {
        FEATURE_NAMES_TAG: json.dumps(features),
        "label_column": label_column,
        RETRAIN_RUN_TAG: run_tag,
        "data_source": source or "bundled iris",
        ONNX_PARITY_TAG: str(onnx_payload is not None).lower(),
    }
    with mlflow.start_run(run_name=run_tag or None, tags=tags) as run:
        mlflow.log_params(
            {
                **asdict(cfg),
                "estimator": "RandomForestClassifier",
                "train_rows": len(train),
                "holdout_rows": len(holdout),
                "feedback_train_rows": len(parts.feedback_train),
                "feedback_holdout_rows": len(feedback_holdout),
            }
        )
        mlflow.log_metrics(metrics)
        logged = mlflow.sklearn.log_model(
            model,
            name=MODEL_ARTIFACT,
            signature=infer_signature(x_train, model.predict(x_train)),
            input_example=x_train.head(3),
            pip_requirements=_pip_requirements(),
            skops_trusted_types=SKOPS_TRUSTED_TYPES,
        )
        # MLflow 3 keeps the model as a LoggedModel outside the run's artifacts: record its URI.
        mlflow.set_tag(MODEL_URI_TAG, logged.model_uri)
        with tempfile.TemporaryDirectory() as tmp:
            _log_artifact(tmp, REFERENCE_ARTIFACT, _csv(x_train))
            _log_artifact(tmp, "eval/holdout.csv", _csv(holdout))
            if len(feedback_holdout):
                _log_artifact(tmp, "eval/feedback_holdout.csv", _csv(feedback_holdout))
            if onnx_payload is not None:
                _log_artifact(tmp, ONNX_ARTIFACT, lambda path: path.write_bytes(onnx_payload))
    logger.info(
        "MLflow run %s: accuracy %.4f on %d trusted held-out rows, %d held-out feedback rows, ONNX parity %s",
        run.info.run_id,
        metrics["accuracy"],
        len(holdout),
        len(feedback_holdout),
        onnx_payload is not None,
    )
    return TrainResult(
        mlflow_run_id=run.info.run_id, metrics=metrics, holdout=holdout, feedback_holdout=feedback_holdout
    )
