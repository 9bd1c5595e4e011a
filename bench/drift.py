"""The iris windows of `make bench` (the champion's reference, bootstrapped rows with measurement
noise), the in-process serving app, and the cost of `/drift/status` as the window grows. Detection
quality is bench/detection.py's."""

from __future__ import annotations

import statistics
import tempfile
import time

import numpy as np
import pandas as pd

from kfp_components.steps.data import BUNDLED_IRIS
from kfp_components.steps.train import TrainConfig, split

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
PETAL_LENGTH = FEATURES.index("petal_length")


def reference_and_pool() -> tuple[np.ndarray, np.ndarray]:
    """The training split (what the pipeline logs as reference) and the full data set to sample from."""
    frame = pd.read_csv(BUNDLED_IRIS)
    train, _ = split(frame, "target", TrainConfig())
    return train[FEATURES].to_numpy(float), frame[FEATURES].to_numpy(float)


def make_window(pool: np.ndarray, rng: np.random.Generator, size: int, shift: float) -> np.ndarray:
    """Bootstrap rows of the data set plus small jitter (measurement noise); `shift` cm on petal length."""
    window = pool[rng.integers(0, len(pool), size)] + rng.normal(0.0, 0.05, (size, pool.shape[1]))
    window[:, PETAL_LENGTH] += shift
    return window


def serving_app(mlflow_tracking_uri: str, model_name: str, state_dir: str, window_size: int):
    """The real serving app in-process (Flask test client), its SQLite store under `state_dir`, the
    champion of `model_name` loaded from MLflow, admin token `bench`."""
    from serving.app import create_app

    return create_app(
        {
            "MLFLOW_TRACKING_URI": mlflow_tracking_uri,
            "MODEL_NAME": model_name,
            "SERVING_STATE_DIR": state_dir,
            "DRIFT_WINDOW_SIZE": window_size,
            "SERVING_ADMIN_TOKEN": "bench",
        }
    )


def status_latency(
    mlflow_tracking_uri: str, model_name: str, window_sizes=(100, 1_000, 10_000, 100_000), reads: int = 15
) -> list[dict]:
    """GET /drift/status of the real app (Flask test client, in-process; SQLite store in a temp dir,
    champion loaded from MLflow) with a full window of each size, filled through POST /predict."""
    _, pool = reference_and_pool()
    rng = np.random.default_rng(1)
    results = []
    for size in window_sizes:
        with tempfile.TemporaryDirectory() as tmp:
            client = serving_app(mlflow_tracking_uri, model_name, tmp, size).test_client()
            for start in range(0, size, 1000):
                rows = make_window(pool, rng, min(1000, size - start), 0.0).round(3).tolist()
                resp = client.post("/predict", json={"instances": rows})
                assert resp.status_code == 200, resp.get_json()
            timings = []
            for _ in range(reads):
                t0 = time.perf_counter()
                resp = client.get("/drift/status")
                timings.append((time.perf_counter() - t0) * 1000)
                assert resp.status_code == 200 and resp.get_json()["samples"] == size, resp.get_json()
            results.append(
                {
                    "window_size": size,
                    "median_ms": round(statistics.median(timings), 2),
                    "max_ms": round(max(timings), 2),
                    "reads": reads,
                }
            )
    return results
