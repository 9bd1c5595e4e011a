"""Connection ids, environment variables and defaults of the drift_retrain DAG, in one place.

Defaults fit the embedded stack (everything on 127.0.0.1); a cluster deployment overrides them with
environment variables / Helm values. Functions here are called at *run* time (from templates and
tasks), never while the DAG file is parsed, except ``param_default`` which only reads ``os.environ``.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

from driftloop import contract
from driftloop.settings import parse_bool

#: The KFP backend connection (``extra.backend``: local | kfp). Env: AIRFLOW_CONN_KFP_DEFAULT.
KFP_CONN_ID = os.environ.get("DRIFT_RETRAIN_KFP_CONN_ID", contract.KFP_CONN_ID)
#: The serving app (HTTP connection). Env: AIRFLOW_CONN_SERVING_DEFAULT='http://127.0.0.1:8000'.
SERVING_CONN_ID = os.environ.get("DRIFT_RETRAIN_SERVING_CONN_ID", contract.SERVING_CONN_ID)
#: Used when neither the DAG param mlflow_tracking_uri nor $MLFLOW_TRACKING_URI is set.
DEFAULT_MLFLOW_TRACKING_URI = "http://127.0.0.1:5000"
DEFAULT_SERVING_URL = "http://127.0.0.1:8000"
#: Prefix of the variables that override the DAG's param defaults, e.g. DRIFT_RETRAIN_MODEL_NAME.
PARAM_ENV_PREFIX = "DRIFT_RETRAIN_"
#: The compiled retrain pipeline (``make compile`` writes it), unless $KFP_PIPELINE_PACKAGE names another.
PIPELINE_FILE = "retrain_pipeline.yaml"
PIPELINE_PACKAGE_ENV = "KFP_PIPELINE_PACKAGE"


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
            return parse_bool(raw, var)
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, (dict, list)):
            return json.loads(raw)
    except ValueError as exc:
        raise ValueError(
            f"environment variable {var}={raw!r} does not fit the type of {name!r} ({type(default).__name__}): {exc}"
        ) from None
    return raw


def mlflow_tracking_uri() -> str:
    """The MLflow tracking URI the pipeline should use when the DAG param is empty."""
    return os.environ.get(contract.MLFLOW_TRACKING_URI_ENV) or DEFAULT_MLFLOW_TRACKING_URI


def pipeline_package() -> str:
    """``$KFP_PIPELINE_PACKAGE``, else ``kfp_components/retrain_pipeline.yaml`` of the installed project.

    Uses importlib's finder only (nothing is imported), so it is cheap and safe at run time.
    """
    env = os.environ.get(PIPELINE_PACKAGE_ENV)
    if env:
        return env
    spec = importlib.util.find_spec("kfp_components")
    if spec is not None and spec.submodule_search_locations:
        return str(Path(list(spec.submodule_search_locations)[0]) / PIPELINE_FILE)
    return str(Path("kfp_components") / PIPELINE_FILE)


def serving_base_url(conn_id: str | None = None) -> str:
    """Base URL of the serving app from its HTTP connection (no credentials), for pipeline params."""
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    conn_id = conn_id or SERVING_CONN_ID
    try:
        conn = BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        return os.environ.get("SERVING_URL") or DEFAULT_SERVING_URL
    return connection_base_url(conn)


def connection_base_url(conn: Any) -> str:
    """``scheme://host[:port]`` of an HTTP connection (as HttpHook builds it), without credentials."""
    host = conn.host or "127.0.0.1"
    if "://" not in host:
        scheme = conn.schema if conn.schema in ("http", "https") else "http"
        host = f"{scheme}://{host}"
    if conn.port:
        host = f"{host.rstrip('/')}:{conn.port}"
    return host.rstrip("/")
