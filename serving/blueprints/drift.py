"""/drift/status, /drift/report and /drift/reset: the shared window against the served model's reference.

The status and the report are one computation (`_look`, then `_status`): the report page is drawn from
the very dict /drift/status answers, never from a second copy of the statistics. A look costs two store
queries (the window with its row ids, then the reset count and the labelled-row counts).
"""

from __future__ import annotations

import time

import numpy as np
from flask import Blueprint, current_app
from werkzeug.wrappers import Response

from serving import metrics
from serving.drift import drift_report
from serving.http import ServingContext, ctx, json_response, require_admin, require_model
from serving.manager import Active
from serving.report import CSP, render_report
from serving.schemas import DriftReset, DriftStatus
from serving.store.base import DriftCounts, WindowSnapshot
from serving.timestamps import iso_utc

bp = Blueprint("drift", __name__)


def _look(c: ServingContext, active: Active) -> tuple[WindowSnapshot, DriftCounts]:
    """The window to test (rows and their ids) and the counts reported next to the statistics."""
    snapshot = c.store.window_snapshot(active.epoch, c.config.drift_window_size)
    rows = snapshot.rows
    if rows.size and rows.shape[1] != active.model.n_features:  # cannot happen within one epoch; be safe
        snapshot = WindowSnapshot(rows[:0], None, None)
    return snapshot, c.store.drift_counts(active.epoch)


def _status(c: ServingContext, active: Active, snapshot: WindowSnapshot, counts: DriftCounts) -> DriftStatus:
    m = active.model
    cfg = c.config
    report = drift_report(
        m.reference_stats,
        snapshot.rows,
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
            "window_epoch": active.epoch,
            "window_resets": counts.window_resets,
            "window_first_row": snapshot.first_row,
            "window_last_row": snapshot.last_row,
            "labelled_rows": counts.labelled_rows,
            "labelled_rows_since_served": counts.labelled_rows_since_served,
        }
    )
    metrics.DRIFT_SAMPLES.set(report["samples"])
    metrics.DRIFT_DETECTED.set(1 if report["drift_detected"] else 0)
    return report


@bp.get("/drift/status")
def drift_status() -> Response:
    c = ctx()
    active = require_model()
    return json_response(_status(c, active, *_look(c, active)))


@bp.get("/drift/report")
def drift_report_page() -> Response:
    """The status as a page people can read (serving/report.py). Drawn once per tested window: the
    page is cached under what it shows (version, epoch, resets, first and last row id, samples, the
    labelled-row counts), so a reload costs the two store queries and no drawing."""
    c = ctx()
    active = require_model()
    snapshot, counts = _look(c, active)
    m = active.model
    key = (
        m.name,
        m.version,
        active.epoch,
        counts.window_resets,
        snapshot.first_row,
        snapshot.last_row,
        len(snapshot.rows),
        counts.labelled_rows,
        counts.labelled_rows_since_served,
    )
    page = c.report_cache.get(key)
    hit = page is not None
    if page is None:
        window = snapshot.rows if snapshot.rows.size else np.empty((0, m.n_features))
        page = render_report(_status(c, active, snapshot, counts), m.reference, window)
        c.report_cache.put(key, page)
    resp = current_app.response_class(page, status=200, mimetype="text/html")
    resp.headers["Content-Security-Policy"] = CSP
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["Cache-Control"] = "no-cache"
    resp.headers["X-Report-Cache"] = "hit" if hit else "miss"
    return resp


@bp.post("/drift/reset")
@require_admin
def drift_reset() -> Response:
    c = ctx()
    active = require_model()
    reset = c.store.reset_window(active.epoch)
    metrics.DRIFT_SAMPLES.set(0)
    metrics.DRIFT_DETECTED.set(0)
    body: DriftReset = {
        "status": "reset",
        "dropped": reset.dropped,
        "model_version": active.model.version,
        "window_resets": reset.resets,
    }
    return json_response(body)
