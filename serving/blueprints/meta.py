"""/metrics (Prometheus, all workers) and /openapi.json."""

from __future__ import annotations

from flask import Blueprint, current_app
from werkzeug.wrappers import Response

from serving import metrics
from serving.http import ctx, json_response
from serving.openapi import build_openapi

bp = Blueprint("meta", __name__)


@bp.get("/metrics")
def prometheus_metrics() -> Response:
    body, content_type = metrics.render()
    return current_app.response_class(body, status=200, content_type=content_type)


@bp.get("/openapi.json")
def openapi() -> Response:
    c = ctx()
    active = c.manager.sync()
    names = list(active.model.feature_names) if active is not None else None
    return json_response(build_openapi(names, c.config.max_batch, c.config.max_body_bytes))
