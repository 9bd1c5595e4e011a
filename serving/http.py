"""Flask glue shared by the blueprints: the app context object, JSON responses and errors, bearer-token
auth (admin endpoints: SERVING_ADMIN_TOKEN; POST /feedback: SERVING_FEEDBACK_TOKEN or the admin token;
one constant-time comparison routine for both), the bounded endpoint label of the request metrics.

Every error leaves the app as JSON `{"error": "..."}` with its status code, including 404/405/413
raised by Flask itself and unexpected exceptions (500, never an HTML page).
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import wraps
from typing import Any, ParamSpec, TypeVar, cast

from flask import Flask, current_app, g, request
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response

from serving import metrics
from serving.config import ServingConfig
from serving.inputs import InputError
from serving.manager import Active, ModelManager
from serving.model import ModelLoadError
from serving.report import PageCache
from serving.store import StateStore, StoreUnavailable

log = logging.getLogger(__name__)


@dataclass
class ServingContext:
    config: ServingConfig
    store: StateStore
    manager: ModelManager
    report_cache: PageCache = field(default_factory=PageCache)  # GET /drift/report's pages (this worker)


def ctx() -> ServingContext:
    return cast(ServingContext, current_app.extensions["serving"])


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None, **extra: Any):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.extra = extra


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    resp = current_app.response_class(json.dumps(body), status=status, mimetype="application/json")
    if headers:
        resp.headers.update(headers)
    return resp


def error_response(status: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> Response:
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


def endpoint_label() -> str:
    """The metrics/endpoint label of this request: its route pattern, or "<unmatched>" (404, 405)."""
    rule = request.url_rule
    return rule.rule if rule is not None else metrics.UNMATCHED_ENDPOINT


ADMIN = "admin"
FEEDBACK = "feedback"


def bearer_credential(tokens: dict[str, str], realm: str, what: str, hint: str) -> str:
    """Which of `tokens` ({kind: configured token}) the request's `Authorization: Bearer` header holds.

    Every configured token is compared, each in constant time (hmac.compare_digest), so neither the
    token nor which kind matched leaks through timing. Raises ApiError 401 with a
    `WWW-Authenticate: Bearer` challenge when the header is missing, not Bearer, or matches none.
    """
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    challenge = {"WWW-Authenticate": f'Bearer realm="{realm}"'}
    if scheme.lower() != "bearer" or not value.strip():
        raise ApiError(401, f"{what} token required: send 'Authorization: Bearer <{hint}>'", challenge)
    presented = value.strip().encode("utf-8", "surrogateescape")
    matched = None
    for kind, token in tokens.items():
        if token and hmac.compare_digest(presented, token.encode("utf-8")) and matched is None:
            matched = kind
    if matched is None:
        raise ApiError(401, f"invalid {what} token", challenge)
    return matched


P = ParamSpec("P")
R = TypeVar("R")


def require_admin(view: Callable[P, R]) -> Callable[P, R]:
    """Bearer-token guard for admin endpoints (token from SERVING_ADMIN_TOKEN)."""

    @wraps(view)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        token = ctx().config.admin_token
        if not token:
            raise ApiError(403, "admin endpoints are disabled: SERVING_ADMIN_TOKEN is not set")
        g.credential = bearer_credential({ADMIN: token}, "serving-admin", "admin", "SERVING_ADMIN_TOKEN")
        return view(*args, **kwargs)

    return wrapper


def require_feedback_credential(view: Callable[P, R]) -> Callable[P, R]:
    """Bearer-token guard of POST /feedback: SERVING_FEEDBACK_TOKEN (a labelling service's own
    credential) or SERVING_ADMIN_TOKEN. Disabled (403) while SERVING_FEEDBACK_TOKEN is not set,
    whatever the admin token: accepting labels is an explicit decision of the deployment.
    The kind of credential that matched ("feedback" or "admin") is left in `g.credential`."""

    @wraps(view)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        cfg = ctx().config
        if not cfg.feedback_token:
            raise ApiError(
                403,
                "feedback is disabled: SERVING_FEEDBACK_TOKEN is not set "
                "(set it to the token the labelling service sends as a bearer token)",
            )
        g.credential = bearer_credential(
            {FEEDBACK: cfg.feedback_token, ADMIN: cfg.admin_token},
            "serving-feedback",
            "feedback",
            "SERVING_FEEDBACK_TOKEN",
        )
        return view(*args, **kwargs)

    return wrapper


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Response:
        return error_response(exc.status, exc.message, exc.headers, **exc.extra)

    @app.errorhandler(InputError)
    def _input_error(exc: InputError) -> Response:
        endpoint = endpoint_label()
        metrics.INPUT_ERRORS.labels(endpoint).inc()
        return error_response(exc.status, exc.message)

    @app.errorhandler(ModelLoadError)
    def _load_error(exc: ModelLoadError) -> Response:
        status = 503 if exc.kind == "unavailable" else 409
        return error_response(
            status,
            f"reload failed, the previous model keeps serving: {exc.message}",
            kind=exc.kind,
            version=exc.version,
        )

    @app.errorhandler(StoreUnavailable)
    def _store_unavailable(exc: StoreUnavailable) -> Response:
        metrics.STORE_ERRORS.labels("request").inc()
        log.warning("%s %s: %s", request.method, request.path, exc)
        return error_response(
            503, f"{exc}; this request changed nothing, retry later", {"Retry-After": "5"}, store=exc.store
        )

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        resp = exc.get_response()
        resp.set_data(json.dumps({"error": exc.description or exc.name}))
        resp.mimetype = "application/json"
        return resp

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        if isinstance(exc, HTTPException):  # pragma: no cover - routed above
            return _http_error(exc)
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, f"internal server error ({type(exc).__name__})")
