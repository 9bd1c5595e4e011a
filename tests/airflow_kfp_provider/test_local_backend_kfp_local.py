"""The local backend running a real compiled pipeline on kfp.local.SubprocessRunner.

The runner here is tiny_run_local.py, the provider's local runner plus an outcome file (the project's
kfp_components.run_local is specific to the retrain pipeline and needs MLflow; the e2e test runs that
one). The operator submits, defers, the trigger waits, the run carries the outcome. A second test runs
the provider's default runner (``python -m airflow_kfp_provider.local_runner``).
"""

from __future__ import annotations

import asyncio
import sys

from airflow.sdk.exceptions import TaskDeferred
from kfp_test_fixtures import TINY_RUNNER, local_conn, set_conn

from airflow_kfp_provider.operators.kfp import KfpRunPipelineOperator


def test_tiny_pipeline_runs_on_kfp_local(monkeypatch, tmp_path, tiny_pipeline):
    from unittest import mock

    set_conn(monkeypatch, "kfp_default", local_conn(tmp_path / "runs", runner=[sys.executable, str(TINY_RUNNER)]))
    op = KfpRunPipelineOperator(
        task_id="submit",
        pipeline_package=str(tiny_pipeline),
        poll_interval=0.5,
        pipeline_params={"msg": "real", "n": "2", "x": "1.5", "flag": "true"},
        run_name_param="run_tag",
        deferrable=True,
    )
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


def test_default_runner_runs_the_pipeline_and_fails_a_failed_step(monkeypatch, tmp_path, tiny_pipeline):
    from kfp_test_fixtures import wait_for

    from airflow_kfp_provider.hooks.kfp import KfpHook

    set_conn(
        monkeypatch,
        "kfp_default",
        {"conn_type": "kfp", "extra": {"backend": "local", "runs_dir": str(tmp_path / "runs")}},
    )
    hook = KfpHook()
    assert hook.config.runner[1:] == ["-m", "airflow_kfp_provider.local_runner"]
    hook.preflight(str(tiny_pipeline))
    ok = hook.submit_run("default-ok", str(tiny_pipeline), {"msg": "plain", "n": 3, "x": 0.5, "flag": False})
    bad = hook.submit_run("default-bad", str(tiny_pipeline), {"msg": "fail"})
    final = {
        r.run_id: wait_for(
            lambda r=r: (x := hook.get_run(r.run_id)).state in ("SUCCEEDED", "FAILED") and x, timeout=180
        )
        for r in (ok, bad)
    }
    assert final[ok.run_id].state == "SUCCEEDED" and final[ok.run_id].outputs == {}
    log = (tmp_path / "runs" / "runs" / ok.run_id / "run.log").read_text()
    assert "echo plain 3 0.5 False" in log
    assert final[bad.run_id].state == "FAILED" and "exited with code 1" in final[bad.run_id].error
