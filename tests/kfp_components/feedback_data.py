"""Feedback as the serving app exports it (`GET /feedback/export`: CSV, header = feature names + `target`,
admin bearer token), served over HTTP to `load_data`, and the data sets of the feedback tests."""

from __future__ import annotations

import csv
import http.server
import io
import threading

import numpy as np
import pandas as pd

from kfp_components.steps.data import BUNDLED_IRIS

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
TOKEN = "feedback-export-token"


def iris() -> pd.DataFrame:
    return pd.read_csv(BUNDLED_IRIS)


def export_csv(rows, labels) -> str:
    """What `GET /feedback/export` answers for these rows (serving/blueprints/feedback.py)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*FEATURES, "target"])
    for features, label in zip(np.asarray(rows, dtype=float).tolist(), labels, strict=True):
        writer.writerow([*(repr(float(v)) for v in features), int(label)])
    return buf.getvalue()


def setosa_like(n: int, seed: int = 0, noise: float = 0.05) -> np.ndarray:
    """Fresh setosa flowers: setosa rows of iris with a little measurement noise."""
    setosa = iris().query("target == 0")[FEATURES].to_numpy()
    rng = np.random.default_rng(seed)
    return np.round(setosa[rng.integers(0, len(setosa), n)] + rng.normal(0.0, noise, (n, 4)), 2)


def shifted_iris(n: int, seed: int, shift: float = 0.5, jitter: float = 0.02) -> tuple[np.ndarray, np.ndarray]:
    """An honest covariate shift with correct labels (the serving loop-settles test's data): iris rows
    with petal length moved by `shift` cm, labelled with their true class."""
    frame = iris()
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(frame), n)
    rows = frame[FEATURES].to_numpy()[idx] + rng.normal(0.0, jitter, (n, 4))
    rows[:, 2] += shift
    return np.round(rows, 3), frame["target"].to_numpy()[idx]


def new_region(n: int = 60, seed: int = 7) -> np.ndarray:
    """`make e2e`'s labelled feedback rows: the seed's shifted sample (7.1, 5.5, 3.4, 2.2) plus noise,
    a region without any iris row (stack/e2e.py labels them with a class the champion does not predict)."""
    rng = np.random.default_rng(seed)
    return (np.array([7.1, 5.5, 3.4, 2.2]) + rng.normal(0, 0.1, size=(n, 4))).round(2)


class FeedbackExport:
    """A stand-in for the serving app's `GET /feedback/export` on a free local port."""

    def __init__(self):
        export = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's naming
                if self.headers.get("Authorization") != f"Bearer {export.token}":
                    self.send_response(401)
                    self.end_headers()
                    return
                body = export.body.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/csv")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.body, self.token = "", TOKEN
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/feedback/export"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def serve(self, rows, labels) -> str:
        self.body = export_csv(rows, labels)
        return self.url

    def close(self):
        self.server.shutdown()
        self.server.server_close()
