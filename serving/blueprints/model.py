"""/health, /model/info, /model/reload and the hot path /predict."""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, request
from prometheus_client import Counter
from werkzeug.wrappers import Response

from serving import metrics
from serving.http import ServingContext, ctx, json_response, require_admin, require_model
from serving.inputs import check_content_type, parse_json_object, parse_rows
from serving.manager import Active
from serving.model import REGISTRY, ModelLoadError
from serving.schemas import Health, ModelInfo, Prediction, ReloadInfo
from serving.store import StoreUnavailable
from serving.timestamps import iso_utc

log = logging.getLogger(__name__)
bp = Blueprint("model", __name__)
# (version, backend) -> its labelled counter (the label lookup off the hot path)
_row_counters: dict[tuple[str, str], Counter] = {}


def _reload_info(c: ServingContext) -> ReloadInfo | None:
    """The last reload attempt, or None (none yet, or the store cannot say: /health reports that)."""
    try:
        last = c.manager.last_reload()
    except StoreUnavailable:
        return None
    if last is None:
        return None
    return {"ok": last.ok, "version": last.version, "message": last.message, "at": iso_utc(last.at)}


@bp.get("/health")
def health() -> Response:
    c = ctx()
    active = c.manager.sync(wait=False)  # a probe never waits for a model load
    load_error = c.manager.error_info()
    store = c.manager.store_info()
    last_reload = _reload_info(c)
    following = c.manager.following  # loading the served record's version now; requests wait for it
    body: Health = {
        "model_name": c.config.model_name,
        "load_error": load_error,
        "last_reload": last_reload,
        "store": store,
        "following": following,
        "status": "not ready",
        "ready": False,
        "model_version": None,
        "backend": None,
    }
    metrics.MODEL_LOADED.set(0 if active is None else 1)
    if active is None:
        reason = (
            "loading the served version"
            if following
            else (load_error["message"] if load_error else "no model loaded yet")
        )
        body["reason"] = reason
        return json_response(body, 503)
    reload_failed = last_reload is not None and not last_reload["ok"]
    load_failed = load_error is not None or reload_failed
    model = active.model
    from_copy = model.source != REGISTRY
    # what waits for MLflow is re-checked in the background (serving/manager.py), never in this request
    c.manager.watch_registry(reload_failed)
    body["status"] = "degraded" if (load_failed or from_copy or not store["ok"]) else "ok"
    body["ready"] = True
    body["model_version"] = model.version
    body["backend"] = model.backend
    body["model_source"] = model.source
    reasons = []
    if not store["ok"]:
        reasons.append(
            f"{store['message']}; predictions are answered from the loaded model, their rows are not "
            "added to the drift window meanwhile (counted in serving_window_rows_unrecorded_total)"
        )
    if load_failed:
        reasons.append(
            "the last model load failed; the previous model keeps serving: "
            + (
                (load_error["message"] if load_error else None)
                or (last_reload["message"] if last_reload else None)
                or ""
            )
        )
    if from_copy:
        reasons.append(
            f"MLflow at {c.config.mlflow_tracking_uri} is unreachable: version {model.version} is served "
            f"from its local copy (saved {model.copy_saved_at}, digests verified); this returns to ok by "
            f"itself once MLflow answers (checked every {c.manager.registry_check_seconds:g} s)"
        )
    note = c.manager.registry_note
    if note and (from_copy or reload_failed):
        reasons.append(note)
    if reasons:
        body["reason"] = "; ".join(reasons)
    return json_response(body)


@bp.get("/health/live")
def liveness() -> Response:
    return json_response({"status": "alive"})


@bp.get("/model/info")
def model_info() -> Response:
    c = ctx()
    active = require_model()
    m = active.model
    info: ModelInfo = {
        "name": m.name,
        "version": m.version,
        "alias": m.alias,
        "run_id": m.run_id,
        "feature_names": list(m.feature_names),
        "n_features": m.n_features,
        "loaded_at": m.loaded_at,
        "backend": m.backend,
        "backend_note": m.backend_note,
        "source": m.source,
        "reference_samples": int(len(m.reference)),
        "window_started_at": iso_utc(active.epoch_started_at),
        "load_error": c.manager.error_info(),
        "last_reload": _reload_info(c),
    }
    return json_response(info)


@bp.post("/model/reload")
@require_admin
def model_reload() -> Response:
    c = ctx()
    try:
        result = c.manager.reload()
    except ModelLoadError:
        metrics.RELOADS.labels("failed").inc()
        raise
    metrics.RELOADS.labels("ok").inc()
    log.info("reload: %s version %s (changed=%s)", result["name"], result["version"], result["changed"])
    return json_response(result)


@bp.post("/predict")
def predict() -> Response:
    c = ctx()
    check_content_type(request.content_type)
    data = parse_json_object(request.get_data(cache=False))
    active = require_model()
    return json_response(predict_parsed(c, active, data))


def predict_parsed(c: ServingContext, active: Active, data: dict[str, Any]) -> Prediction:
    """The /predict work once the body is a JSON object and a model is active: validate the rows,
    predict, add them to the drift window, count them; returns the response body.

    Shared by the view above and the WSGI fast path (serving/fastpath.py). Raises (InputError, a
    model error) only before the drift window insert, so the fast path can hand a failing request to
    this view unchanged, without a row entering the window twice.
    """
    X, batch = parse_rows(data, active.model.n_features, c.config.max_batch)
    active, predictions, recorded = c.manager.predict_and_record(active, X)
    if not recorded:  # the answer matters more than the window (store outage): count what is missing
        metrics.WINDOW_ROWS_UNRECORDED.inc(len(X))
    model = active.model
    key = (model.version, model.backend)
    counter = _row_counters.get(key)
    if counter is None:
        counter = _row_counters[key] = metrics.PREDICTED_ROWS.labels(*key)
    counter.inc(len(predictions))
    body: Prediction = {"model_name": model.name, "model_version": model.version, "backend": model.backend}
    if batch:
        body["predictions"] = predictions
        body["count"] = len(predictions)
    else:
        body["prediction"] = predictions[0]
    return body
