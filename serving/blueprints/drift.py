"""/drift/status and /drift/reset: the shared window against the served model's reference."""

from __future__ import annotations

import time

from flask import Blueprint
from werkzeug.wrappers import Response

from serving import metrics
from serving.drift import drift_report
from serving.http import ctx, json_response, require_admin, require_model
from serving.timestamps import iso_utc

bp = Blueprint("drift", __name__)


@bp.get("/drift/status")
def drift_status() -> Response:
    c = ctx()
    active = require_model()
    m = active.model
    cfg = c.config
    window = c.store.window(active.epoch, cfg.drift_window_size)
    if window.size and window.shape[1] != m.n_features:  # cannot happen within one epoch; be safe
        window = window[:0]
    report = drift_report(
        m.reference,
        window,
        m.feature_names,
        threshold=cfg.drift_threshold,
        correction=cfg.drift_correction,
        window_size=cfg.drift_window_size,
        min_samples=cfg.effective_min_samples,
    )
    report.update(
        {
            "model_name": m.name,
            "model_version": m.version,
            "run_id": m.run_id,
            "window_started_at": iso_utc(active.epoch_started_at),
            "checked_at": iso_utc(time.time()),
        }
    )
    metrics.DRIFT_SAMPLES.set(report["samples"])
    metrics.DRIFT_DETECTED.set(1 if report["drift_detected"] else 0)
    return json_response(report)


@bp.post("/drift/reset")
@require_admin
def drift_reset() -> Response:
    c = ctx()
    active = require_model()
    dropped = c.store.reset_window(active.epoch)
    metrics.DRIFT_SAMPLES.set(0)
    metrics.DRIFT_DETECTED.set(0)
    return json_response({"status": "reset", "dropped": dropped, "model_version": active.model.version})
