"""Training helpers apart from MLflow: the held-out splits, the estimator, the ONNX copy."""

import numpy as np
import pandas as pd
import pytest

from kfp_components.steps.data import BUNDLED_IRIS
from kfp_components.steps.errors import StepError
from kfp_components.steps.train import TrainConfig, build_estimator, evaluate, export_onnx, split, split_with_feedback
from tests.kfp_components.feedback_data import setosa_like


def test_held_out_rows_stay_held_out_when_data_grows():
    """Champion and candidate are compared on rows neither trained on."""
    iris = pd.read_csv(BUNDLED_IRIS)
    train, holdout = split(iris, "target", TrainConfig())
    assert 0.1 < len(holdout) / len(iris) < 0.3
    feedback = pd.DataFrame([[7.1, 5.5, 3.4 + i / 100, 2.2, 1] for i in range(60)], columns=iris.columns)
    grown_train, grown_holdout = split(pd.concat([iris, feedback], ignore_index=True), "target", TrainConfig())
    old_rows = set(map(tuple, holdout.to_numpy().tolist()))
    assert old_rows <= set(map(tuple, grown_holdout.to_numpy().tolist()))
    assert not old_rows & set(map(tuple, grown_train.to_numpy().tolist()))


def test_tiny_tables_fall_back_to_a_seeded_split():
    tiny = pd.DataFrame({"a": np.arange(10.0), "target": [0, 1] * 5})
    train, holdout = split(tiny, "target", TrainConfig(test_size=0.2))
    assert len(holdout) >= 1 and train["target"].nunique() == 2


def test_onnx_export_matches_sklearn():
    iris = pd.read_csv(BUNDLED_IRIS)
    train, holdout = split(iris, "target", TrainConfig())
    model = build_estimator(TrainConfig(n_estimators=10)).fit(train.iloc[:, :4], train["target"])
    assert export_onnx(model, holdout.iloc[:, :4]) is not None
    assert evaluate(model, holdout.iloc[:, :4], holdout["target"])["accuracy"] > 0.8


def _rows(frame: pd.DataFrame) -> list[tuple]:
    return list(map(tuple, frame.to_numpy().tolist()))


def test_feedback_never_enters_the_trusted_holdout():
    """The trusted held-out rows are the data set's own, exactly those of a split without feedback,
    whatever feedback is posted: poison, copies of every data set row (right and wrong labels)."""
    iris = pd.read_csv(BUNDLED_IRIS)
    cfg = TrainConfig()
    base_train, trusted = split(iris, "target", cfg)
    poison = pd.DataFrame(setosa_like(500), columns=iris.columns[:4]).assign(target=2)
    copies = iris.copy()
    relabelled = iris.assign(target=(iris["target"] + 1) % 3)
    feedback = pd.concat([poison, copies, relabelled], ignore_index=True)

    parts = split_with_feedback(iris, feedback, "target", cfg)
    pd.testing.assert_frame_equal(parts.holdout, trusted)
    feedback_rows = set(_rows(feedback))
    assert not set(_rows(parts.holdout)) & (feedback_rows - set(_rows(iris)))
    assert len(parts.feedback_train) + len(parts.feedback_holdout) == len(feedback)
    assert len(parts.train) == len(base_train) + len(parts.feedback_train)
    assert set(_rows(parts.feedback_holdout)) <= feedback_rows
    assert 0.1 < len(parts.feedback_holdout) / len(feedback) < 0.3  # the same hash, among feedback rows
    # a posted copy of a trusted row is held out with the feedback: it cannot leak into training
    assert set(_rows(trusted)) <= set(_rows(parts.feedback_holdout))
    assert not set(_rows(trusted)) & set(_rows(parts.train))
    # the same feedback is split the same way on every retrain, also when more arrives
    more = pd.concat(
        [feedback, pd.DataFrame(setosa_like(50, seed=1), columns=iris.columns[:4]).assign(target=0)], ignore_index=True
    )
    more_parts = split_with_feedback(iris, more, "target", cfg)
    assert set(_rows(parts.feedback_holdout)) <= set(_rows(more_parts.feedback_holdout))


def test_feedback_read_back_from_csv_hashes_like_the_data_set(tmp_path):
    """train_model reads feedback from CSV: integer-valued features written as integers come back as
    integers, and must still be recognised as copies of trusted rows."""
    rng = np.random.default_rng(0)
    base = pd.DataFrame(rng.integers(0, 20, (200, 3)).astype(float), columns=["a", "b", "c"])
    base["target"] = (base["a"] > 9).astype(int)
    _, trusted = split(base, "target", TrainConfig())
    trusted.astype(int).to_csv(tmp_path / "feedback.csv", index=False)
    feedback = pd.read_csv(tmp_path / "feedback.csv")
    assert feedback["a"].dtype == np.int64
    parts = split_with_feedback(base, feedback, "target", TrainConfig())
    assert len(parts.feedback_holdout) == len(trusted) and parts.feedback_train.empty


def test_feedback_columns_must_be_the_data_sets():
    iris = pd.read_csv(BUNDLED_IRIS)
    with pytest.raises(StepError, match="feedback columns"):
        split_with_feedback(iris, iris.rename(columns={"petal_width": "pw"}), "target", TrainConfig())
