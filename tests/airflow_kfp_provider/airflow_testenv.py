"""Environment for the Airflow tests: a throw-away AIRFLOW_HOME with a SQLite metadata DB.

Imported by the conftest files of tests/airflow_kfp_provider and tests/dags *before anything imports
airflow*, because Airflow reads its configuration once, at import time. ``init_db()`` creates the
metadata tables in-process (what ``airflow db migrate`` does for a fresh database) once per session.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

if "_airflow_testenv_home" not in os.environ:
    _home = tempfile.mkdtemp(prefix="airflow-home-")
    os.environ["_airflow_testenv_home"] = _home
    atexit.register(shutil.rmtree, _home, ignore_errors=True)
    if "airflow" in sys.modules:  # pragma: no cover - a test ordering problem, say so loudly
        raise RuntimeError("airflow was imported before tests/airflow_kfp_provider/airflow_testenv.py set AIRFLOW_HOME")

AIRFLOW_HOME = Path(os.environ["_airflow_testenv_home"])
os.environ.update(
    {
        "AIRFLOW_HOME": str(AIRFLOW_HOME),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{AIRFLOW_HOME / 'airflow.db'}",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        "KFP_LOCAL_RUNS_DIR": str(AIRFLOW_HOME / "kfp_local_runs"),
    }
)

_db_ready = False


def init_db() -> None:
    """Create the metadata DB once (SQLite, in AIRFLOW_HOME)."""
    global _db_ready
    if _db_ready:
        return
    from airflow.utils import db

    db.initdb()
    _db_ready = True
