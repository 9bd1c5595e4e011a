"""Connection ids, environment variables and defaults of the Airflow control plane, in one place.

Defaults fit the embedded stack (everything on 127.0.0.1); a cluster deployment overrides them with
environment variables / Helm values. Functions here are called at *run* time (from templates and
tasks), never while a DAG file is parsed, except ``param_default`` which only reads ``os.environ``.
"""
from __future__ import annotations

import json
import os
from typing import Any

#: The KFP backend connection (``extra.backend``: local | kfp). Env: AIRFLOW_CONN_KFP_DEFAULT.
KFP_CONN_ID = os.environ.get("DRIFT_RETRAIN_KFP_CONN_ID", "kfp_default")
#: The serving app (HTTP connection). Env: AIRFLOW_CONN_SERVING_DEFAULT='http://127.0.0.1:8000'.
SERVING_CONN_ID = os.environ.get("DRIFT_RETRAIN_SERVING_CONN_ID", "serving_default")
#: Used when neither the DAG param mlflow_uri nor $MLFLOW_TRACKING_URI is set.
DEFAULT_MLFLOW_URI = "http://127.0.0.1:5000"
DEFAULT_SERVING_URL = "http://127.0.0.1:8000"
#: Prefix of the variables that override the DAG's param defaults, e.g. DRIFT_RETRAIN_MODEL_NAME.
PARAM_ENV_PREFIX = "DRIFT_RETRAIN_"


def param_default(name: str, default: Any) -> Any:
    """``$DRIFT_RETRAIN_<NAME>`` converted to the type of ``default``, else ``default``.

    A value that does not convert raises ValueError naming the variable: the DAG then shows up as an
    import error in the UI instead of silently running with another default.
    """
    var = PARAM_ENV_PREFIX + name.upper()
    raw = os.environ.get(var)
    if raw is None:
        return default
    try:
        if isinstance(default, bool):
            low = raw.strip().lower()
            if low not in ("true", "false", "1", "0"):
                raise ValueError("expected true or false")
            return low in ("true", "1")
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, (dict, list)):
            return json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"environment variable {var}={raw!r} does not fit the type of {name!r} "
                         f"({type(default).__name__}): {exc}") from None
    return raw


def mlflow_tracking_uri() -> str:
    """The MLflow URI the pipeline should use when the DAG param is empty."""
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_MLFLOW_URI


def serving_base_url(conn_id: str | None = None) -> str:
    """Base URL of the serving app from its HTTP connection (no credentials), for pipeline params."""
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    conn_id = conn_id or SERVING_CONN_ID
    try:
        conn = BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        return os.environ.get("SERVING_URL") or DEFAULT_SERVING_URL
    host = conn.host or "127.0.0.1"
    if "://" not in host:
        scheme = conn.schema if conn.schema in ("http", "https") else "http"
        host = f"{scheme}://{host}"
    if conn.port:
        host = f"{host.rstrip('/')}:{conn.port}"
    return host.rstrip("/")
