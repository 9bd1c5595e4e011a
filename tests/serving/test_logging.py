"""gunicorn and the app log through one logging configuration (driftloop.logs, passed as gunicorn's
`logconfig_dict`): with LOG_FORMAT=json every line from gunicorn's loggers and the app's module
loggers, INFO included, is one JSON object."""

from __future__ import annotations

import json
import re

import pytest

from tests.serving.conftest import ADMIN_TOKEN, start_gunicorn, stop_gunicorn


@pytest.fixture(scope="module")
def json_server(mlflow_server, model_name, champion, tmp_path_factory):
    srv = start_gunicorn(
        tmp_path_factory.mktemp("json-logs"),
        model_name,
        mlflow_server,
        workers=1,
        extra_env={"LOG_FORMAT": "json", "LOG_LEVEL": "INFO"},
    )
    yield srv
    stop_gunicorn(srv)


def _records(text: str) -> list[dict]:
    """The JSON log lines; any other line must not be a log line in a text format (gunicorn's default
    "[INFO]" or driftloop.logs' text format): libraries may still print warnings to stderr."""
    records = []
    for line in text.splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))
        else:
            assert not re.search(r"\[(DEBUG|INFO|WARNING|ERROR)\]| (DEBUG|INFO|WARNING|ERROR) \[\d+\] ", line), line
    return records


def test_gunicorn_and_app_loggers_write_json_lines(json_server, champion):
    reload = json_server.post("/model/reload", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert reload.status_code == 200
    stop_gunicorn(json_server)  # everything written and flushed
    records = _records(json_server.log_text())
    for record in records:
        assert {"time", "level", "logger", "message"} <= set(record), record
    by_logger = {r["logger"] for r in records}
    assert "gunicorn.error" in by_logger, by_logger  # gunicorn's own ("Starting gunicorn", "Booting worker")
    assert any(r["logger"] == "gunicorn.error" and "Booting worker" in r["message"] for r in records)
    # the app's loggers are named by module, and their INFO lines are kept
    started = [r for r in records if r["logger"] == "serving.app" and r["level"] == "INFO"]
    assert started and f"version {champion.version}" in started[0]["message"], records
    assert any(r["logger"] == "serving.blueprints.model" and r["message"].startswith("reload:") for r in records)
    assert not any(r["logger"] == "gunicorn.access" for r in records)  # off unless GUNICORN_ACCESSLOG is set
