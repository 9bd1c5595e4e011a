"""gunicorn configuration of the serving app.

    gunicorn -c serving/gunicorn.conf.py 'serving.app:create_app()'

Environment (all optional):
    GUNICORN_BIND / SERVING_HOST + SERVING_PORT   where to listen (default 127.0.0.1:8000)
    GUNICORN_WORKERS (default 2), GUNICORN_THREADS (default 1)
    GUNICORN_WORKER_CLASS (default serving.worker.BufferingSyncWorker: the sync worker reading each
        request in full, with header and body read timeouts, before the app sees it; `sync` = gunicorn's;
        with GUNICORN_THREADS > 1 gunicorn runs its gthread worker instead, without those timeouts)
    GUNICORN_TIMEOUT (30 s), GUNICORN_GRACEFUL_TIMEOUT (30 s), GUNICORN_KEEPALIVE (5 s)
    GUNICORN_MAX_REQUESTS (0 = never recycle workers), GUNICORN_ACCESSLOG (unset = no access log; `-` =
        with the other log lines on stderr, or a file), GUNICORN_ERRORLOG (`-` = stderr, or a file)
    LOG_LEVEL (or GUNICORN_LOGLEVEL; default info), LOG_FORMAT (text or json: one JSON object a line)
        for gunicorn's and the app's loggers alike (driftloop/logs.py)
    PROMETHEUS_MULTIPROC_DIR   metrics files of all workers (default <SERVING_STATE_DIR>/prometheus)

Graceful reload of the code and config: `kill -HUP <master pid>` starts new workers and retires the
old ones after their current request. A new model does not need that: `POST /model/reload`.
"""

import os
import shutil
import sys
from pathlib import Path
from typing import Any

from serving import gunicorn_logging

_env = os.environ.get

# The master imports the heavy libraries once; forked workers inherit them, so a worker starts (and
# a crashed one comes back) in well under a second instead of importing mlflow (~7 s here) itself.
# Must come before prometheus_client is imported anywhere: its multiprocess mode is chosen at import.
_state_dir = Path(_env("SERVING_STATE_DIR", ".stack/serving"))
_prom_dir = _env("PROMETHEUS_MULTIPROC_DIR") or str(_state_dir / "prometheus")
os.environ["PROMETHEUS_MULTIPROC_DIR"] = _prom_dir

# MLflow client defaults for a server process: fail in seconds, not minutes of retries (a worker
# loads the champion before it serves, and gunicorn replaces a worker silent for `timeout` seconds).
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")

_bind = _env("GUNICORN_BIND")
if _bind:
    bind = [b.strip() for b in _bind.split(",") if b.strip()]
else:
    bind = [f"{_env('SERVING_HOST', '127.0.0.1')}:{_env('SERVING_PORT', '8000')}"]

workers = int(_env("GUNICORN_WORKERS", _env("SERVING_WORKERS", "2")))
worker_class = _env("GUNICORN_WORKER_CLASS", "serving.worker.BufferingSyncWorker")
threads = int(_env("GUNICORN_THREADS", "1"))
timeout = int(_env("GUNICORN_TIMEOUT", "30"))
graceful_timeout = int(_env("GUNICORN_GRACEFUL_TIMEOUT", "30"))
keepalive = int(_env("GUNICORN_KEEPALIVE", "5"))
max_requests = int(_env("GUNICORN_MAX_REQUESTS", "0"))
max_requests_jitter = int(_env("GUNICORN_MAX_REQUESTS_JITTER", "0"))
backlog = int(_env("GUNICORN_BACKLOG", "2048"))
preload_app = False  # each worker builds its app (and opens its own SQLite connections) after the fork
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
accesslog = _env("GUNICORN_ACCESSLOG") or None
errorlog = _env("GUNICORN_ERRORLOG", "-")
loglevel = _env("LOG_LEVEL") or _env("GUNICORN_LOGLEVEL", "info")
# gunicorn's loggers and the app's through one dictConfig (driftloop.logs: LOG_LEVEL, LOG_FORMAT=text|json)
logconfig_dict = gunicorn_logging.logconfig_dict(loglevel, accesslog, errorlog)
logger_class = gunicorn_logging.Logger
proc_name = _env("GUNICORN_PROC_NAME", "driftloop-serving")
# gunicorn >= 25 opens a control socket under $HOME by default, shared by every instance: not wanted
control_socket_disable = _env("GUNICORN_CONTROL_SOCKET", "") == ""
if not control_socket_disable:
    control_socket = _env("GUNICORN_CONTROL_SOCKET")


def on_starting(server: Any) -> None:
    """Master start: the state file is checked first (a damaged one stops gunicorn here, before it
    binds the port: one message and exit 1 within a second, not a boot failure per worker), then a
    clean metrics directory (stale files of a previous run would be summed in), then the preload."""
    try:
        from serving.config import ServingConfig
        from serving.store import SQLITE_PREFIX, StateFileError
        from serving.store.sqlite import check_state_file

        url = ServingConfig.from_env().resolved_store_url
        if url.startswith(SQLITE_PREFIX):
            check_state_file(url[len(SQLITE_PREFIX) :])
    except StateFileError as exc:
        server.log.error("Cannot start serving: %s", exc)
        sys.exit(1)
    except Exception as exc:  # noqa: BLE001 - e.g. a config error: each worker reports it when it boots
        server.log.warning("serving: start-up check of the state store skipped: %s", exc)
    path = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    # Preload the libraries the workers need (see above), but nothing native that does not survive a
    # fork: onnxruntime imported here makes every worker hang in its exit handlers (a worker that
    # fails to boot never exits, gunicorn keeps the port without a working worker). Each worker
    # imports it itself (~0.1 s) when it builds its ONNX session. Checked by tests/serving/test_state_file.py.
    try:
        import mlflow.artifacts  # noqa: F401
        import mlflow.sklearn  # noqa: F401
        import mlflow.tracking  # noqa: F401
        import pandas  # noqa: F401
        import scipy.stats  # noqa: F401

        import serving.app  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - workers will import (and report) themselves
        server.log.warning("serving: preloading libraries failed (each worker imports them itself): %s", exc)


def child_exit(server: Any, worker: Any) -> None:
    """A worker is gone: drop its live-gauge files so that they are not summed any more."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]
