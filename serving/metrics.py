"""Prometheus metrics, correct across gunicorn workers.

Under gunicorn, `serving/gunicorn.conf.py` sets PROMETHEUS_MULTIPROC_DIR before prometheus_client is
imported: every worker then writes its samples to memory-mapped files in that directory and
`/metrics` (whichever worker answers) aggregates all of them. Without that variable (tests, a plain
`flask run`) the default in-process registry is used.
"""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

REQUESTS = Counter("serving_http_requests_total", "HTTP requests answered", ["method", "endpoint", "status"])
LATENCY = Histogram(
    "serving_http_request_duration_seconds",
    "Time to answer an HTTP request",
    ["method", "endpoint"],
    buckets=LATENCY_BUCKETS,
)
PREDICTED_ROWS = Counter("serving_predicted_rows_total", "Rows predicted", ["model_version", "backend"])
INPUT_ERRORS = Counter("serving_input_errors_total", "Requests rejected for invalid input", ["endpoint"])
FEEDBACK_ROWS = Counter("serving_feedback_rows_total", "Labelled feedback rows stored")
STORE_ERRORS = Counter(
    "serving_store_errors_total", "State-store operations that failed (store unreachable)", ["operation"]
)
WINDOW_ROWS_UNRECORDED = Counter(
    "serving_window_rows_unrecorded_total",
    "Predicted rows that could not be added to the drift window (store unavailable)",
)
RELOADS = Counter("serving_model_reloads_total", "Admin reload calls by outcome", ["outcome"])
MODEL_LOADED = Gauge(
    "serving_model_loaded", "1 while this worker serves a model (summed over live workers)", multiprocess_mode="livesum"
)
# computed by the worker that answers the scrape, from the shared window
DRIFT_SAMPLES = Gauge("serving_drift_window_samples", "Rows in the drift window", multiprocess_mode="mostrecent")
DRIFT_DETECTED = Gauge(
    "serving_drift_detected", "1 when the last drift check found drift", multiprocess_mode="mostrecent"
)


# (method, endpoint, status) -> the bound children
_request_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

# Label values must come from a bounded set: every distinct value is one more series in every scrape
# (and, under gunicorn, in every worker's metrics file). The method is client-chosen text (gunicorn
# passes any upper-case token, e.g. "XYZZY"), so methods outside this set are counted as "other".
# Endpoints are Flask URL rules (a fixed set) or "<unmatched>" for 404/405, never the raw path.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"})
OTHER_METHOD = "other"
UNMATCHED_ENDPOINT = "<unmatched>"


def observe_request(method: str, endpoint: str, status: int, seconds: float) -> None:
    """Count one answered request and its latency. The labelled children are looked up once per
    label combination (`.labels()` costs a lock and a dict lookup per call; this is the hot path).

    `method` may be anything the client sent (it is folded to a known method or "other" here);
    `endpoint` must be a route pattern or UNMATCHED_ENDPOINT, never a raw request path."""
    if method not in KNOWN_METHODS:
        method = OTHER_METHOD
    key = (method, endpoint, status)
    pair = _request_children.get(key)
    if pair is None:
        pair = _request_children[key] = (
            REQUESTS.labels(method, endpoint, str(status)),
            LATENCY.labels(method, endpoint),
        )
    pair[0].inc()
    pair[1].observe(seconds)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir")


def render() -> tuple[bytes, str]:
    if multiprocess_dir():
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
