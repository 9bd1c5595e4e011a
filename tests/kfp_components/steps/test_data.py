"""Reading and checking training data, apart from KFP."""

import numpy as np
import pandas as pd
import pytest

from kfp_components.steps.data import check_frame, describe, load_training_data, load_training_frame, read_table
from kfp_components.steps.errors import StepError
from tests.kfp_components.feedback_data import TOKEN


def test_bundled_iris_is_the_default():
    frame = load_training_frame("")
    assert frame.shape == (150, 5)
    meta = describe(frame, "target")
    assert meta["rows"] == 150 and meta["features"] == 4
    assert '"petal_length"' in meta["feature_names"]
    assert meta["class_counts"] == '{"0": 50, "1": 50, "2": 50}'


def test_any_csv_or_parquet_with_a_label_column(tmp_path):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(40, 13)), columns=[f"f{i}" for i in range(13)])
    frame["kind"] = ["a", "b"] * 20
    frame.to_parquet(tmp_path / "d.parquet")
    frame.to_csv(tmp_path / "d.csv", index=False)
    for uri in (str(tmp_path / "d.parquet"), f"file://{tmp_path / 'd.csv'}"):
        loaded = load_training_frame(uri, label_column="kind")
        assert list(loaded.columns) == [f"f{i}" for i in range(13)] + ["kind"]


@pytest.mark.parametrize(
    "content, label, message",
    [
        ("a,b\n1,2\n", "target", "no label column 'target'"),
        ("a,target\n" + "x,0\n" * 5 + "1,1\n" * 6, "target", "non-numeric feature columns: 'a'"),
        ("a,target\n" + "1,0\n" * 12, "target", "has 1 class(es); at least 2"),
        ("a,target\n" + "1,0\n,1\n" * 6, "target", "missing or infinite values in feature columns ['a']"),
        ("target\n0\n1\n", "target", "no feature columns"),
        ("a,target\n1,0\n2,1\n", "target", "2 rows; at least 10"),
    ],
)
def test_bad_tables_are_named(tmp_path, content, label, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(StepError) as err:
        load_training_frame(str(path), label_column=label)
    assert message in str(err.value)
    assert str(path) in str(err.value)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(StepError, match="file not found"):
        read_table(str(tmp_path / "nope.csv"))
    with pytest.raises(StepError, match="not a regular file"):
        read_table(str(tmp_path))
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"\x00\x01not parquet")
    with pytest.raises(StepError, match="cannot be read as Parquet"):
        read_table(str(garbage))
    with pytest.raises(StepError, match="unsupported scheme 's3'"):
        read_table("s3://bucket/data.csv")


def test_feedback_is_kept_apart_from_the_data_set(feedback_export):
    """Feedback keeps its provenance: a table of its own with the data set's columns, never merged in."""
    url = feedback_export.serve([[7.1, 5.5, 3.4, 2.2], [7.0, 5.4, 3.5, 2.1]], [2, 2])
    data = load_training_data("", feedback_url=url, token=TOKEN)
    assert len(data.base) == 150 and describe(data.base, "target")["class_counts"] == '{"0": 50, "1": 50, "2": 50}'
    assert list(data.feedback.columns) == list(data.base.columns)
    assert data.feedback.to_numpy().tolist() == [[7.1, 5.5, 3.4, 2.2, 2], [7.0, 5.4, 3.5, 2.1, 2]]
    assert data.feedback["target"].dtype == data.base["target"].dtype
    pd.testing.assert_frame_equal(data.base, load_training_frame(""))  # the data set stays as it is


def test_no_feedback_is_an_empty_table_with_the_columns():
    data = load_training_data("")
    assert data.feedback.empty and list(data.feedback.columns) == list(data.base.columns)


def test_feedback_errors_name_the_url(feedback_export):
    url = feedback_export.serve([[7.1, 5.5, 3.4, 2.2]], [2])
    with pytest.raises(StepError, match="HTTP 401; set SERVING_ADMIN_TOKEN"):
        load_training_data("", feedback_url=url, token="wrong")
    feedback_export.body = "x,y,target\n1,2,0\n"
    with pytest.raises(StepError, match="feedback features \\['x', 'y'\\] differ"):
        load_training_data("", feedback_url=url, token=TOKEN)
    with pytest.raises(StepError, match="not reachable"):
        load_training_data("", feedback_url="http://127.0.0.1:9/feedback/export", token=TOKEN)


def test_check_frame_keeps_float_features_and_label():
    frame = pd.DataFrame({"a": ["1", "2"] * 5, "target": [0, 1] * 5})
    checked = check_frame(frame, "target", "test")
    assert checked["a"].dtype == float and checked["target"].tolist() == [0, 1] * 5
