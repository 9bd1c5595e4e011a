"""Flask glue shared by the blueprints: the app context object, JSON responses and errors, admin auth.

Every error leaves the app as JSON `{"error": "..."}` with its status code, including 404/405/413
raised by Flask itself and unexpected exceptions (500, never an HTML page).
"""
from __future__ import annotations

import hmac
import json
import logging
from dataclasses import dataclass
from functools import wraps
from typing import Any

from flask import Flask, current_app, request
from werkzeug.exceptions import HTTPException

from serving import metrics
from serving.config import ServingConfig
from serving.inputs import InputError
from serving.manager import Active, ModelManager
from serving.model import ModelLoadError
from serving.store import SQLiteStore

log = logging.getLogger("serving")


@dataclass
class ServingContext:
    config: ServingConfig
    store: SQLiteStore
    manager: ModelManager


def ctx() -> ServingContext:
    return current_app.extensions["serving"]


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None, **extra: Any):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.extra = extra


def json_response(body: Any, status: int = 200, headers: dict | None = None):
    resp = current_app.response_class(json.dumps(body), status=status, mimetype="application/json")
    if headers:
        resp.headers.update(headers)
    return resp


def error_response(status: int, message: str, headers: dict | None = None, **extra: Any):
    return json_response({"error": message, **extra}, status, headers)


def require_model() -> Active:
    """The model this worker serves (after following the shared record); 503 when there is none."""
    c = ctx()
    active = c.manager.sync()
    if active is None:
        err = c.manager.load_error
        reason = err.message if err is not None else "no model loaded yet"
        raise ApiError(503, f"model not ready: {reason}", {"Retry-After": "5"})
    return active


def require_admin(view):
    """Bearer-token guard for admin endpoints (token from SERVING_ADMIN_TOKEN)."""

    @wraps(view)
    def wrapper(*args, **kwargs):
        token = ctx().config.admin_token
        if not token:
            raise ApiError(403, "admin endpoints are disabled: SERVING_ADMIN_TOKEN is not set")
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        challenge = {"WWW-Authenticate": 'Bearer realm="serving-admin"'}
        if scheme.lower() != "bearer" or not value.strip():
            raise ApiError(401, "admin token required: send 'Authorization: Bearer <SERVING_ADMIN_TOKEN>'", challenge)
        if not hmac.compare_digest(value.strip().encode("utf-8", "surrogateescape"), token.encode("utf-8")):
            raise ApiError(401, "invalid admin token", challenge)
        return view(*args, **kwargs)

    return wrapper


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        return error_response(exc.status, exc.message, exc.headers, **exc.extra)

    @app.errorhandler(InputError)
    def _input_error(exc: InputError):
        endpoint = request.url_rule.rule if request.url_rule is not None else "<unmatched>"
        metrics.INPUT_ERRORS.labels(endpoint).inc()
        return error_response(exc.status, exc.message)

    @app.errorhandler(ModelLoadError)
    def _load_error(exc: ModelLoadError):
        status = 503 if exc.kind == "unavailable" else 409
        return error_response(status, f"reload failed, the previous model keeps serving: {exc.message}",
                              kind=exc.kind, version=exc.version)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        resp = exc.get_response()
        resp.set_data(json.dumps({"error": exc.description or exc.name}))
        resp.mimetype = "application/json"
        return resp

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        if isinstance(exc, HTTPException):  # pragma: no cover - routed above
            return _http_error(exc)
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, f"internal server error ({type(exc).__name__})")
