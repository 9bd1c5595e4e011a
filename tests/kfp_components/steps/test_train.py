"""Training helpers apart from MLflow."""
import numpy as np
import pandas as pd

from kfp_components.steps.data import BUNDLED_IRIS
from kfp_components.steps.train import TrainConfig, build_estimator, evaluate, export_onnx, split


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
