"""gunicorn's logging, through the project's one logging configuration (driftloop.logs).

serving/gunicorn.conf.py passes `logconfig_dict(...)` to gunicorn, so gunicorn's loggers and the app's
go through one dictConfig (LOG_FORMAT=json: one JSON object a line from both), and names `Logger` as
gunicorn's logger class.
"""

from __future__ import annotations

from typing import Any

from gunicorn import glogging

from driftloop.logs import logging_config


def logconfig_dict(level: str | None, accesslog: str | None, errorlog: str) -> dict[str, Any]:
    """The dictConfig document for gunicorn: everything on stderr (`-`), or the error log (gunicorn's
    and the app's lines) and the access log in the files GUNICORN_ERRORLOG / GUNICORN_ACCESSLOG name."""
    config = logging_config(level)
    if errorlog != "-":
        config["handlers"]["stderr"] = {"class": "logging.FileHandler", "filename": errorlog, "formatter": "default"}
    if accesslog and accesslog != "-":
        config["handlers"]["access"] = {"class": "logging.FileHandler", "filename": accesslog, "formatter": "default"}
        config["loggers"]["gunicorn.access"].update(handlers=["access"], propagate=False)
    return config


class Logger(glogging.Logger):  # type: ignore[misc]  # gunicorn has no type hints
    """gunicorn's logger with the access log on only when GUNICORN_ACCESSLOG is set: gunicorn turns it
    on whenever a `logconfig_dict` is given, and building each access line costs throughput."""

    @property
    def access_log_enabled(self) -> bool:
        return bool(self.cfg.accesslog)
