"""The local backend running a real compiled pipeline on kfp.local.SubprocessRunner.

The runner here is tiny_run_local.py, which implements run_local's contract for any pipeline (the
project's kfp_components.run_local is specific to the retrain pipeline and needs MLflow; the e2e
test runs that one). The operator submits, defers, the trigger waits, the record carries the outcome.
"""
from __future__ import annotations

import asyncio
import sys

from airflow.sdk.exceptions import TaskDeferred

from airflow_kfp_provider.operators.kfp import KfpRunPipelineOperator
from kfp_test_fixtures import TINY_RUNNER, local_conn, set_conn


def test_tiny_pipeline_runs_on_kfp_local(monkeypatch, tmp_path, tiny_pipeline):
    from unittest import mock

    set_conn(monkeypatch, "kfp_default", local_conn(tmp_path / "runs", runner=[sys.executable, str(TINY_RUNNER)]))
    op = KfpRunPipelineOperator(task_id="submit", pipeline_package=str(tiny_pipeline), poll_interval=0.5,
                                pipeline_params={"msg": "real", "n": "2", "x": "1.5", "flag": "true"})
    ti = mock.MagicMock(map_index=-1)
    context = {"dag": mock.MagicMock(dag_id="d"), "run_id": "manual__1", "ti": ti}
    try:
        op.execute(context)
        raise AssertionError("expected a deferral")
    except TaskDeferred as deferred:
        trigger = deferred.trigger

    async def wait():
        async for event in trigger.run():
            return event.payload

    event = asyncio.run(asyncio.wait_for(wait(), timeout=180))
    assert event["status"] == "success", event
    run = op.execute_complete(context, event)
    outcome = run["outputs"]["outcome"]
    assert outcome["params"] == {"msg": "real", "n": 2, "x": 1.5, "flag": True, "run_tag": run["display_name"]}
    log = (tmp_path / "runs" / "runs" / run["run_id"] / "run.log").read_text()
    assert "echo real 2 1.5 True" in log  # printed by the component, in its own process
