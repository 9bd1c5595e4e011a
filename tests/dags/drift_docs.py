"""Documents shared by the drift watcher tests."""

from __future__ import annotations


def status(**over):
    """A /drift/status document as the serving app answers it (contract of issue #13)."""
    doc = {
        "drift_detected": True,
        "threshold": 0.05,
        "samples": 100,
        "window_size": 100,
        "min_samples": 30,
        "correction": "bonferroni",
        "adjusted_threshold": 0.0125,
        "feature_names": ["petal_length", "sepal_width"],
        "features": {
            "feature_0": {"name": "petal_length", "ks_stat": 0.6, "p_value": 1e-6, "p_adjusted": 4e-6, "drift": True},
            "feature_1": {"name": "sepal_width", "ks_stat": 0.1, "p_value": 0.7, "p_adjusted": 1.0, "drift": False},
        },
        "drifted_features": ["petal_length"],
        "model_name": "iris-model",
        "model_version": "6",
        "window_epoch": 3,
        "window_resets": 0,
        "window_first_row": 101,
        "window_last_row": 200,
        "labelled_rows": 40,
        "labelled_rows_since_served": 10,
        "checked_at": "2026-12-02T10:00:00Z",
    }
    doc.update(over)
    return doc
