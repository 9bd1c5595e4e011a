"""A thin WSGI fast path for the hot request, `POST /predict` with a valid body.

Why: on a 2-core host under load, Flask's per-request machinery (request and app contexts, URL
matching, before/after hooks, a Response object and its headers) cost about as much CPU as parsing,
predicting and storing the row together; that CPU shows up directly as queueing in p99.

What it does: for `POST /predict` with a Content-Length within the body limit it reads the body once
and runs the same plain functions as the Flask view (serving/inputs.py, `ModelManager.current`, and
`predict_parsed`: predict, then the drift-window insert that also checks the served generation, row
counter), then answers with the same bytes and headers the view would, and records the same request
metrics. Anything else, and every request that fails on the way (invalid input, no model, an
exception), goes to the full Flask app with the body restored, so validation messages, error JSON,
error metrics and logging have exactly one implementation. `predict_parsed` raises only before its
drift-window insert, so a request handed over never adds its rows twice.
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from serving import metrics
from serving.blueprints.model import predict_parsed
from serving.http import ServingContext
from serving.inputs import check_content_type, parse_json_object

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

_ENDPOINT = "/predict"


class PredictFastPath:
    def __init__(self, flask_wsgi: WSGIApplication, context: ServingContext) -> None:
        self.flask_wsgi = flask_wsgi
        self.ctx = context
        self.max_body = context.config.max_body_bytes

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != _ENDPOINT or environ.get("REQUEST_METHOD") != "POST":
            return self.flask_wsgi(environ, start_response)
        t0 = time.perf_counter()
        length = environ.get("CONTENT_LENGTH") or ""
        if not (length.isascii() and length.isdigit() and 0 < int(length) <= self.max_body):
            return self.flask_wsgi(environ, start_response)  # no length, chunked, empty, 413: Flask says
        body = environ["wsgi.input"].read(int(length))
        try:
            check_content_type(environ.get("CONTENT_TYPE"))
            data = parse_json_object(body)
            c = self.ctx
            active = c.manager.current()
            if active is None:
                raise LookupError("no model")  # the view answers 503 with the reason
            payload = json.dumps(predict_parsed(c, active, data)).encode("utf-8")
        except Exception:  # noqa: BLE001 - one implementation of every error answer: the Flask view
            environ["wsgi.input"] = io.BytesIO(body)
            return self.flask_wsgi(environ, start_response)
        start_response(
            "200 OK",
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(payload))),
                ("X-Serving-Worker", str(os.getpid())),
            ],
        )
        metrics.observe_request("POST", _ENDPOINT, 200, time.perf_counter() - t0)
        return [payload]
