"""Airflow test environment (temp AIRFLOW_HOME, SQLite) and the shared fixtures."""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import airflow_testenv  # noqa: E402,F401  (must run before anything imports airflow)
from kfp_test_fixtures import *  # noqa: E402,F401,F403
