"""Reading and checking training data, apart from KFP."""
import http.server
import threading

import numpy as np
import pandas as pd
import pytest

from kfp_components.steps.data import check_frame, describe, load_training_frame, read_table
from kfp_components.steps.errors import StepError


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


@pytest.mark.parametrize("content, label, message", [
    ("a,b\n1,2\n", "target", "no label column 'target'"),
    ("a,target\n" + "x,0\n" * 5 + "1,1\n" * 6, "target", "non-numeric feature columns: 'a'"),
    ("a,target\n" + "1,0\n" * 12, "target", "has 1 class(es); at least 2"),
    ("a,target\n" + "1,0\n,1\n" * 6, "target", "missing or infinite values in feature columns ['a']"),
    ("target\n0\n1\n", "target", "no feature columns"),
    ("a,target\n1,0\n2,1\n", "target", "2 rows; at least 10"),
])
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


class _FeedbackHandler(http.server.BaseHTTPRequestHandler):
    body = ""
    token = "secret"

    def do_GET(self):  # noqa: N802 - http.server's naming
        if self.headers.get("Authorization") != f"Bearer {self.token}":
            self.send_response(401)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/csv")
        self.end_headers()
        self.wfile.write(self.body.encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def feedback_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FeedbackHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/feedback/export"
    server.shutdown()


def test_feedback_rows_are_appended(feedback_server):
    _FeedbackHandler.body = "sepal_length,sepal_width,petal_length,petal_width,target\n7.1,5.5,3.4,2.2,2\n7.0,5.4,3.5,2.1,2\n"
    frame = load_training_frame("", feedback_url=feedback_server, token="secret")
    assert len(frame) == 152
    assert frame.iloc[-1].tolist() == [7.0, 5.4, 3.5, 2.1, 2]


def test_feedback_errors_name_the_url(feedback_server):
    with pytest.raises(StepError, match="HTTP 401; set SERVING_ADMIN_TOKEN"):
        load_training_frame("", feedback_url=feedback_server, token="wrong")
    _FeedbackHandler.body = "x,y,target\n1,2,0\n"
    with pytest.raises(StepError, match="feedback features \\['x', 'y'\\] differ"):
        load_training_frame("", feedback_url=feedback_server, token="secret")
    with pytest.raises(StepError, match="not reachable"):
        load_training_frame("", feedback_url="http://127.0.0.1:9/feedback/export", token="secret")


def test_check_frame_keeps_float_features_and_label():
    frame = pd.DataFrame({"a": ["1", "2"] * 5, "target": [0, 1] * 5})
    checked = check_frame(frame, "target", "test")
    assert checked["a"].dtype == float and checked["target"].tolist() == [0, 1] * 5
