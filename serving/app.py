"""The serving app factory.

    gunicorn -c serving/gunicorn.conf.py 'serving.app:create_app()'

`create_app(config=None)` reads the environment (see serving/config.py and docs/serving.md);
`config` (a mapping with the environment variables' names, or a ServingConfig) overrides it.
Each gunicorn worker builds its own app and loads the champion at start; the drift window, the
served-version record and the feedback rows live in the shared state store (SERVING_STORE_URL:
SQLite for one host, PostgreSQL for several replicas).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import Any

from flask import Flask, g, request
from werkzeug.wrappers import Response

from serving import metrics
from serving.blueprints import ALL as BLUEPRINTS
from serving.config import ServingConfig
from serving.fastpath import PredictFastPath
from serving.http import ServingContext, endpoint_label, register_error_handlers
from serving.manager import ModelManager
from serving.model import MlflowModelLoader
from serving.model_cache import ModelCopies
from serving.store import open_store

log = logging.getLogger(__name__)


def create_app(config: ServingConfig | Mapping[str, Any] | None = None) -> Flask:
    cfg = config if isinstance(config, ServingConfig) else ServingConfig.from_env(config)
    app = Flask("serving")
    app.config["MAX_CONTENT_LENGTH"] = cfg.max_body_bytes
    app.config["SERVING"] = cfg

    store = open_store(cfg.resolved_store_url, cfg.drift_window_size)
    copies = ModelCopies(cfg.model_copy_dir or os.path.join(cfg.state_dir, "models"))
    loader = MlflowModelLoader(cfg.mlflow_tracking_uri, cfg.model_name, cfg.model_alias, cfg.predict_backend, copies)
    manager = ModelManager(store, loader, retry_seconds=cfg.load_retry_seconds)
    app.extensions["serving"] = ServingContext(cfg, store, manager)

    register_error_handlers(app)
    for bp in BLUEPRINTS:
        app.register_blueprint(bp)
    _install_request_metrics(app)
    app.wsgi_app = PredictFastPath(app.wsgi_app, app.extensions["serving"])  # type: ignore[method-assign]

    manager.startup()
    if manager.active is not None:
        metrics.MODEL_LOADED.set(1)
        m = manager.active.model
        log.info("serving %s version %s (%s backend)", m.name, m.version, m.backend)
    else:
        log.warning("no model loaded at start-up: %s", manager.load_error.message if manager.load_error else "?")
    return app


def _install_request_metrics(app: Flask) -> None:
    perf = time.perf_counter

    @app.before_request
    def _start_timer() -> None:
        g._t0 = perf()

    @app.after_request
    def _observe(response: Response) -> Response:
        t0 = g.get("_t0")
        if t0 is None:
            return response
        rule = endpoint_label()  # a route pattern or "<unmatched>": bounded, unlike the raw path
        metrics.observe_request(request.method, rule, response.status_code, perf() - t0)
        response.headers["X-Serving-Worker"] = str(os.getpid())  # which worker answered (debugging, tests)
        return response
