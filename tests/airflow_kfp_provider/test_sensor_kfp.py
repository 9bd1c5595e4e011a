"""KfpRunSensor waits for a run submitted elsewhere, on both backends."""

from __future__ import annotations

from unittest import mock

import pytest
from airflow.sdk import PokeReturnValue
from airflow.sdk.exceptions import AirflowException
from kfp_test_fixtures import wait_for

from airflow_kfp_provider.hooks.kfp import KfpHook
from airflow_kfp_provider.links.kfp import XCOM_RUN_URL
from airflow_kfp_provider.sensors.kfp import KfpRunSensor


def _context() -> dict:
    return {"ti": mock.MagicMock()}


def _poke_until_done(sensor: KfpRunSensor, context: dict):
    return wait_for(lambda: sensor.poke(context), timeout=30)


def test_success_returns_the_run(backend, tiny_pipeline):
    run = KfpHook().submit_run("sensed-ok", str(tiny_pipeline), {"msg": "ok"})
    sensor = KfpRunSensor(task_id="wait", run_id=run.run_id)
    context = _context()
    result = _poke_until_done(sensor, context)
    assert isinstance(result, PokeReturnValue) and result.is_done
    assert result.xcom_value["run_id"] == run.run_id and result.xcom_value["state"] == "SUCCEEDED"
    context["ti"].xcom_push.assert_any_call(key=XCOM_RUN_URL, value=run.url or mock.ANY)


def test_running_is_not_done_and_failure_fails(backend, tiny_pipeline):
    slow = KfpHook().submit_run("sensed-slow", str(tiny_pipeline), {"msg": "slow"})
    assert KfpRunSensor(task_id="wait", run_id=slow.run_id).poke(_context()) is False
    KfpHook().cancel_run(slow.run_id)
    failed = KfpHook().submit_run("sensed-fail", str(tiny_pipeline), {"msg": "fail"})
    sensor = KfpRunSensor(task_id="wait", run_id=failed.run_id)
    with pytest.raises(AirflowException, match="ended FAILED"):
        _poke_until_done(sensor, _context())
