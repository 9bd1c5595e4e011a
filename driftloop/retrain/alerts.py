"""Failure alerts for the drift_retrain DAG: one clear log line, plus an optional webhook.

``failure_alert`` is an Airflow ``on_failure_callback``. It always logs a single line that starts with
``ALERT`` (easy to grep, to ship to a log-based alerting rule, or to read in the task log). When the
environment variable ``DRIFT_RETRAIN_ALERT_CONN_ID`` names an Airflow HTTP connection (a Slack or
Teams incoming webhook, an Alertmanager/webhook relay, ...), the same text is POSTed there as
``{"text": "..."}``. The callback never raises: an alerting problem must not hide the original failure.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)

ALERT_CONN_ENV = "DRIFT_RETRAIN_ALERT_CONN_ID"


def alert_text(context: Mapping[str, Any]) -> str:
    """The alert line, for a task failure (context has ti + exception) or a DAG-run failure (reason)."""
    ti = context.get("ti") or context.get("task_instance")
    dag_run = context.get("dag_run")
    dag_id = (
        getattr(ti, "dag_id", None) or getattr(context.get("dag"), "dag_id", None) or getattr(dag_run, "dag_id", "?")
    )
    run_id = context.get("run_id") or getattr(ti, "run_id", None) or getattr(dag_run, "run_id", "?")
    if ti is not None and context.get("exception") is not None:
        error = " ".join(str(context["exception"]).split())[:800]
        return f"ALERT dag={dag_id} task={ti.task_id} run={run_id} failed: {error}"
    reason = context.get("reason") or "failed"
    return f"ALERT dag={dag_id} run={run_id} dag run failed ({reason}); see the failed task's ALERT line and log"


def failure_alert(context: Mapping[str, Any]) -> None:
    try:
        text = alert_text(context)
    except Exception as exc:  # never let the callback fail
        text = f"ALERT a drift_retrain task failed (could not describe it: {exc})"
    log.error(text)
    post_alert(text)


def post_alert(text: str) -> None:
    """POST ``{"text": text}`` to the connection named by ``$DRIFT_RETRAIN_ALERT_CONN_ID`` (if set).

    Blocking (one HTTP request, 10 s at most) and never raises; the drift watcher calls it in a thread
    for its ``blocked`` alerts, the failure callback directly."""
    conn_id = os.environ.get(ALERT_CONN_ENV)
    if not conn_id:
        return
    try:
        from airflow.providers.http.hooks.http import HttpHook

        HttpHook(method="POST", http_conn_id=conn_id).run(
            json={"text": text}, extra_options={"timeout": 10, "check_response": True}
        )
    except Exception as exc:
        log.warning("Could not send the alert to connection %r: %s", conn_id, exc)
