"""Helpers shared by the drift_retrain DAG tests: the DAG parsed with settings, a run's task states,
the local backend's pipeline runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kfp_test_fixtures import REPO


def parse_dag(**env: str) -> Any:
    """drift_retrain parsed from dags/ with `DRIFT_RETRAIN_*` settings set (read at parse time)."""
    from airflow.dag_processing.dagbag import DagBag

    with pytest.MonkeyPatch.context() as mp:
        for name, value in env.items():
            mp.setenv(name, value)
        bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    return bag.dags["drift_retrain"]


def task_states(dr: Any) -> dict[str, str]:
    return {ti.task_id: str(getattr(ti.state, "value", ti.state)) for ti in dr.get_task_instances()}


def local_runs(runs_dir: Path) -> list[dict]:
    from airflow_kfp_provider.local_runs import LocalRunStore

    return LocalRunStore(runs_dir).list_runs()
