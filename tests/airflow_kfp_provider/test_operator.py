"""KfpRunPipelineOperator, in the providers' style, run against BOTH backends:

* ``local``: the detached runner (fake_run_local.py honours run_local's contract) and on-disk records;
* ``kfp``: the real kfp.Client talking to fake_kfp_server.py (KFP v2beta1 REST shapes).

The run's behaviour follows its ``msg`` parameter on both backends: "ok" succeeds, "fail" fails,
"slow" keeps running.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import timedelta
from unittest import mock

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException, TaskDeferred
from kfp_test_fixtures import free_port, local_conn, set_conn, wait_for

from airflow_kfp_provider.exceptions import KfpTransientError
from airflow_kfp_provider.hooks.kfp import KfpHook
from airflow_kfp_provider.operators.kfp import KfpRunPipelineOperator, build_run_name
from airflow_kfp_provider.triggers.kfp import KfpRunTrigger

RUN_ID = "manual__2025-06-01T12:00:00.123456+00:00"


def make_context(run_id: str = RUN_ID) -> dict:
    ti = mock.MagicMock()
    ti.map_index = -1
    dag = mock.MagicMock()
    dag.dag_id = "drift_retrain"
    return {"dag": dag, "run_id": run_id, "ti": ti}


def make_op(pipeline, msg="ok", **kwargs) -> KfpRunPipelineOperator:
    kwargs.setdefault("poll_interval", 0.1)
    kwargs.setdefault("deferrable", True)
    kwargs.setdefault("run_name_param", "run_tag")
    return KfpRunPipelineOperator(
        task_id="submit_retrain",
        pipeline_package=str(pipeline),
        pipeline_params={"msg": msg, "n": "4", "x": "0.75", "flag": "False"},
        **kwargs,
    )


def defer(op, context) -> TaskDeferred:
    with pytest.raises(TaskDeferred) as exc:
        op.execute(context)
    return exc.value


def first_event(trigger: KfpRunTrigger) -> dict:
    async def run():
        async for event in trigger.run():
            return event.payload

    return asyncio.run(run())


def final_state(run_id: str, *states) -> str:
    hook = KfpHook()
    return wait_for(lambda: (s := hook.get_run(run_id).state) in (states or ("SUCCEEDED", "FAILED", "CANCELED")) and s)


# -- run names -----------------------------------------------------------------------------------
def test_run_name_is_deterministic_sanitized_and_unique():
    a = build_run_name("drift_retrain", "submit_retrain", RUN_ID)
    assert a == build_run_name("drift_retrain", "submit_retrain", RUN_ID)
    assert a.startswith("drift-retrain-submit-retrain-manual-2025-06-01t12-00-00-123456-00-00-")
    assert set(a) <= set("abcdefghijklmnopqrstuvwxyz0123456789-")
    assert a != build_run_name("drift_retrain", "submit_retrain", RUN_ID.replace(".", "_"))
    assert len(build_run_name("d" * 300, "t", RUN_ID)) <= 110


# -- submit, defer, complete ---------------------------------------------------------------------
def test_defers_to_the_right_trigger_after_pushing_the_run_id(backend, tiny_pipeline):
    context = make_context()
    op = make_op(tiny_pipeline, timeout=timedelta(minutes=30))
    deferred = defer(op, context)

    submitted = backend.submitted()
    assert len(submitted) == 1
    trigger = deferred.trigger
    assert isinstance(trigger, KfpRunTrigger)
    assert deferred.method_name == "execute_complete"
    assert deferred.timeout > timedelta(minutes=30)
    assert trigger.kfp_conn_id == "kfp_default" and trigger.poll_interval == 0.1
    assert 1700 < trigger.end_time - time.time() <= 1800
    run_id = submitted[0]["run_id"]
    assert trigger.run_id == run_id
    name = build_run_name("drift_retrain", "submit_retrain", RUN_ID)
    assert trigger.run_name == name
    context["ti"].xcom_push.assert_any_call(key="run_id", value=run_id)
    context["ti"].xcom_push.assert_any_call(key="run_name", value=name)


def test_parameters_reach_the_pipeline_in_declared_types(backend, tiny_pipeline):
    defer(make_op(tiny_pipeline), make_context())
    name = build_run_name("drift_retrain", "submit_retrain", RUN_ID)
    expected = {"msg": "ok", "n": 4, "x": 0.75, "flag": False, "run_tag": name}
    run = backend.submitted()[0]
    if backend.name == "kfp":
        assert run["runtime_config"]["parameters"] == expected
    else:
        assert run["params"] == expected
        assert run["command"][-10:] == [
            "--param",
            "msg=ok",
            "--param",
            "n=4",
            "--param",
            "x=0.75",
            "--param",
            "flag=false",
            "--param",
            f"run_tag={name}",
        ]


def test_trigger_event_completes_the_task(backend, tiny_pipeline):
    context = make_context()
    op = make_op(tiny_pipeline)
    deferred = defer(op, context)
    event = first_event(deferred.trigger)
    assert event["status"] == "success", event
    result = op.execute_complete(context, event)
    assert result["state"] == "SUCCEEDED" and result["run_id"] == deferred.trigger.run_id
    if backend.name == "local":
        assert result["outputs"]["outcome"]["decision"] == "accepted"


def test_retried_execute_finds_its_own_run_and_submits_nothing(backend, tiny_pipeline):
    first = defer(make_op(tiny_pipeline, msg="slow"), make_context())
    # the worker died; Airflow retries the task: a new operator instance, same DAG run
    retry = defer(make_op(tiny_pipeline, msg="slow"), make_context())
    assert retry.trigger.run_id == first.trigger.run_id
    assert len(backend.submitted()) == 1
    KfpHook().cancel_run(first.trigger.run_id)


def test_already_finished_run_is_not_deferred(backend, tiny_pipeline):
    first = defer(make_op(tiny_pipeline), make_context())
    final_state(first.trigger.run_id, "SUCCEEDED")
    context = make_context()
    result = make_op(tiny_pipeline).execute(context)  # no TaskDeferred
    assert result["run_id"] == first.trigger.run_id and result["state"] == "SUCCEEDED"
    assert len(backend.submitted()) == 1
    context["ti"].xcom_push.assert_any_call(key="run_id", value=first.trigger.run_id)


def test_failed_run_fails_the_task_with_its_error(backend, tiny_pipeline):
    context = make_context()
    op = make_op(tiny_pipeline, msg="fail")
    event = first_event(defer(op, context).trigger)
    assert event["status"] == "failed"
    with pytest.raises(AirflowException) as err:
        op.execute_complete(context, event)
    text = str(err.value)
    assert "ended FAILED" in text
    assert ("data_uri /nope.csv" in text) if backend.name == "local" else ("task train-model failed" in text)


def test_retry_after_a_failed_run_submits_a_new_attempt(backend, tiny_pipeline):
    first = defer(make_op(tiny_pipeline, msg="fail"), make_context())
    final_state(first.trigger.run_id, "FAILED")
    second = defer(make_op(tiny_pipeline, msg="fail"), make_context())
    assert second.trigger.run_id != first.trigger.run_id
    assert second.trigger.run_name == first.trigger.run_name + "-a2"
    assert len(backend.submitted()) == 2
    # and with rerun_failed=False the failed run is final: the task fails, nothing new is submitted
    with pytest.raises(AirflowException, match="ended FAILED"):
        make_op(tiny_pipeline, msg="fail", rerun_failed=False).execute(make_context())
    assert len(backend.submitted()) == 2


def test_on_kill_cancels_the_run(backend, tiny_pipeline):
    op = make_op(tiny_pipeline, msg="slow")
    deferred = defer(op, make_context())
    if backend.name == "local":
        wait_for(lambda: KfpHook().get_run(deferred.trigger.run_id).state == "RUNNING")
    op.on_kill()
    assert final_state(deferred.trigger.run_id) == "CANCELED"


def test_timeout_cancels_the_run_and_fails(backend, tiny_pipeline):
    context = make_context()
    op = make_op(tiny_pipeline, msg="slow", timeout=0.3)
    deferred = defer(op, context)
    event = first_event(deferred.trigger)
    assert event["status"] == "timeout"
    with pytest.raises(AirflowException, match="did not finish in time.*canceled"):
        op.execute_complete(context, event)
    assert final_state(deferred.trigger.run_id) == "CANCELED"


def test_non_deferrable_waits_in_the_worker(backend, tiny_pipeline):
    result = make_op(tiny_pipeline, deferrable=False).execute(make_context())
    assert result["state"] == "SUCCEEDED"
    assert len(backend.submitted()) == 1


def test_wait_for_completion_false_returns_after_submit(backend, tiny_pipeline):
    result = make_op(tiny_pipeline, msg="slow", wait_for_completion=False).execute(make_context())
    assert result["state"] in ("PENDING", "RUNNING")
    KfpHook().cancel_run(result["run_id"])


# -- bad input: a failure that says which and how to fix; nothing submitted ----------------------
@pytest.mark.parametrize(
    "change,needle",
    [
        ({"pipeline_package": "/nonexistent/retrain_pipeline.yaml"}, "compiled pipeline not found"),
        ({"pipeline_params": {"msg": "ok", "min_acuracy": 0.9}}, "has no parameter(s) min_acuracy"),
        ({"pipeline_params": {"n": "many"}}, "'n' must be an integer"),
    ],
)
def test_bad_pipeline_input_submits_nothing(backend, tiny_pipeline, change, needle):
    op = make_op(tiny_pipeline)
    for key, value in change.items():
        setattr(op, key, value)
    with pytest.raises(AirflowFailException) as err:
        op.execute(make_context())
    assert needle in str(err.value) and "nothing submitted" in str(err.value)
    assert backend.submitted() == []


def test_unknown_backend_submits_nothing(monkeypatch, tmp_path, tiny_pipeline):
    conn = local_conn(tmp_path)
    conn["extra"]["backend"] = "kubeflow-v1"
    set_conn(monkeypatch, "kfp_default", conn)
    with pytest.raises(AirflowFailException, match="unknown KFP backend 'kubeflow-v1'.*one of local, kfp"):
        make_op(tiny_pipeline).execute(make_context())
    assert not (tmp_path / "runs").exists()


def test_unreachable_kfp_host_submits_nothing(monkeypatch, tiny_pipeline):
    set_conn(
        monkeypatch,
        "kfp_default",
        {"conn_type": "kfp", "host": f"http://127.0.0.1:{free_port()}", "extra": {"backend": "kfp"}},
    )
    with pytest.raises(KfpTransientError, match="unreachable.*Check the host of connection 'kfp_default'"):
        make_op(tiny_pipeline).execute(make_context())


def test_missing_local_runner_module_submits_nothing(monkeypatch, tmp_path, tiny_pipeline):
    import sys

    conn = local_conn(tmp_path / "runs", runner=[sys.executable, "-m", "no_such_module.run_local"])
    set_conn(monkeypatch, "kfp_default", conn)
    with pytest.raises(AirflowFailException, match="no_such_module.run_local is not importable"):
        make_op(tiny_pipeline).execute(make_context())
    assert not list((tmp_path / "runs").glob("runs/*"))


# -- transient API errors while waiting (kfp backend) --------------------------------------------
def test_transient_api_errors_while_waiting_are_tolerated(monkeypatch, kfp_server, tiny_pipeline):
    from kfp_test_fixtures import kfp_conn

    set_conn(monkeypatch, "kfp_default", kfp_conn(kfp_server))
    context = make_context()
    op = make_op(tiny_pipeline, max_transient_errors=3)
    deferred = defer(op, context)
    kfp_server.fail_next(3, 503)
    event = first_event(deferred.trigger)
    assert event["status"] == "success"
    assert op.execute_complete(context, event)["state"] == "SUCCEEDED"


def test_persistent_api_errors_while_waiting_fail_the_task(monkeypatch, kfp_server, tiny_pipeline):
    from kfp_test_fixtures import kfp_conn

    set_conn(monkeypatch, "kfp_default", kfp_conn(kfp_server))
    context = make_context()
    op = make_op(tiny_pipeline, max_transient_errors=2)
    deferred = defer(op, context)
    kfp_server.fail_next(50, 503)
    event = first_event(deferred.trigger)
    assert event["status"] == "error"
    with pytest.raises(AirflowException, match="gave up watching KFP run .* after 3 consecutive errors.*503"):
        op.execute_complete(context, event)
    assert len(kfp_server.created_runs) == 1


def test_operator_is_cheap_to_build_and_json_renders(tiny_pipeline):
    # No connection lookups when the operator is created (DAG parse time).
    with mock.patch.object(KfpHook, "get_connection", side_effect=AssertionError("looked up at parse time")):
        op = make_op(tiny_pipeline)
    assert op.template_fields == ("pipeline_package", "pipeline_params", "run_name", "kfp_conn_id")
    json.dumps(op.pipeline_params)


def test_deferrable_default_comes_from_airflow_configuration(monkeypatch, tiny_pipeline):
    import importlib

    import airflow_kfp_provider.operators.kfp as module

    try:
        for value, expected in (("True", True), ("False", False)):
            monkeypatch.setenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", value)
            fresh = importlib.reload(module)  # the default is read when the class is defined, like Airflow's own
            assert fresh.KfpRunPipelineOperator(task_id="t", pipeline_package=str(tiny_pipeline)).deferrable is expected
    finally:
        monkeypatch.delenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE")
        importlib.reload(module)


def test_run_url_is_kept_for_the_extra_link(backend, tiny_pipeline):
    from airflow_kfp_provider.links.kfp import XCOM_RUN_URL, KfpRunLink

    context = make_context()
    op = make_op(tiny_pipeline)
    deferred = defer(op, context)
    assert any(isinstance(link, KfpRunLink) for link in op.operator_extra_links)
    url = KfpHook().get_run(deferred.trigger.run_id).url
    assert url and (
        url.endswith(f"/#/runs/details/{deferred.trigger.run_id}")
        if backend.name == "kfp"
        else url.startswith("file://")
    )
    context["ti"].xcom_push.assert_any_call(key=XCOM_RUN_URL, value=url)
    with mock.patch("airflow.sdk.execution_time.xcom.XCom.get_value", return_value=url) as get_value:
        assert KfpRunLink().get_link(op, ti_key=mock.sentinel.ti_key) == url
    get_value.assert_called_once_with(ti_key=mock.sentinel.ti_key, key=XCOM_RUN_URL)
