"""Logging of every process the project starts (serving workers and gunicorn, pipeline steps, the
stack's command line), through `logging.config.dictConfig`.

Settings: `LOG_LEVEL` (default INFO) and `LOG_FORMAT` = `text` (default) or `json` (one JSON object a
line: timestamp, level, logger, message and any `extra=` fields, for log collectors). Loggers are
named by module (`logging.getLogger(__name__)`); only command-line entry points print. Airflow's own
processes keep Airflow's logging configuration: the provider logs through `self.log` there.
"""

from __future__ import annotations

import logging.config
import os
from collections.abc import Mapping
from typing import Any

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"
JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s"


def logging_config(
    level: str | None = None, fmt: str | None = None, env: Mapping[str, str] = os.environ
) -> dict[str, Any]:
    """The dictConfig document: one stderr handler on the root logger, gunicorn's loggers sent there
    too (gunicorn.conf.py passes this as `logconfig_dict`). Raises ValueError naming a bad setting."""
    level = (level or env.get("LOG_LEVEL") or "INFO").strip().upper()
    if not isinstance(logging.getLevelName(level), int):
        raise ValueError(f"LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got {level!r}")
    fmt = (fmt or env.get("LOG_FORMAT") or "text").strip().lower()
    if fmt not in FORMATS:
        raise ValueError(f"LOG_FORMAT must be one of {', '.join(FORMATS)}, got {fmt!r}")
    formatter: dict[str, Any] = {"format": TEXT_FORMAT}
    if fmt == "json":
        formatter = {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "format": JSON_FIELDS,
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
        }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "default", "stream": "ext://sys.stderr"}
        },
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {
            # gunicorn's own loggers: through the root handler, in the same format
            "gunicorn.error": {"level": level, "handlers": [], "propagate": True},
            "gunicorn.access": {"level": "INFO", "handlers": [], "propagate": True},
            # chatty libraries: their INFO lines are not ours
            "urllib3": {"level": "WARNING"},
            "alembic": {"level": "WARNING"},
        },
    }


def configure_logging(level: str | None = None, fmt: str | None = None, env: Mapping[str, str] = os.environ) -> None:
    """Apply `logging_config` to this process (idempotent: a second call replaces the handler)."""
    logging.config.dictConfig(logging_config(level, fmt, env))
