"""drift_retrain's event path: the asset and its watcher, the schedule, the drift_event branch, the
episode's KFP run name, the feedback default of event runs, the report capture, and whole runs
started by a drift event (dag.test() with the watcher's asset event attached to the run, stand-in
serving app and runner as in test_drift_retrain_dag.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest
from dag_runs import local_runs as _runs
from dag_runs import parse_dag
from dag_runs import task_states as _states
from drift_docs import status
from kfp_test_fixtures import REPO, free_port, set_conn

from driftloop.retrain.episodes import Look, decide

DAGS = REPO / "dags"
PAYLOAD = decide(Look.from_status(status()), {}).event


@pytest.fixture(scope="module")
def dag():
    return parse_dag(DRIFT_RETRAIN_POLL_INTERVAL="0.3", DRIFT_RETRAIN_DRIFT_POLL_INTERVAL="5")


def asset_events(payload=PAYLOAD, name="serving_drift", n=1):
    from airflow.sdk import Asset

    events = [
        SimpleNamespace(extra={"from_trigger": True, "payload": {**payload, "n": i}}, timestamp=f"2026-12-02T10:0{i}")
        for i in range(n)
    ]
    return {Asset(name=name): events}


def test_the_asset_its_watcher_and_the_schedule(dag):
    from airflow.sdk import AssetOrTimeSchedule

    from driftloop.retrain.drift_events import DriftEventTrigger

    schedule = dag.timetable
    assert isinstance(schedule, AssetOrTimeSchedule)
    assert schedule.timetable.expression == "0 */6 * * *" and str(schedule.timetable.timezone) == "UTC"
    asset = schedule.asset_condition
    assert asset.name == "serving_drift"
    (watcher,) = asset.watchers
    assert watcher.name == "serving_drift_watcher"
    assert isinstance(watcher.trigger, DriftEventTrigger)
    assert watcher.trigger.serialize()[1] == {
        "http_conn_id": "serving_default",
        "endpoint": "/drift/status",
        "poll_interval": 5.0,  # $DRIFT_RETRAIN_DRIFT_POLL_INTERVAL
        "request_timeout": 10.0,
    }


CRON_ONLY = textwrap.dedent("""
    import json, os, sys
    from airflow.dag_processing.dagbag import DagBag
    bag = DagBag(dag_folder=sys.argv[1])
    dag = bag.dags["drift_retrain"]
    print(json.dumps({"errors": {k: str(v) for k, v in bag.import_errors.items()},
                      "timetable": type(dag.timetable).__name__, "expression": dag.timetable.expression}))
""")


@pytest.mark.parametrize(("value", "expected"), [("false", "CronTriggerTimetable"), ("no", "CronTriggerTimetable")])
def test_drift_events_off_means_the_cron_only(value, expected):
    import json

    env = {**os.environ, "DRIFT_RETRAIN_DRIFT_EVENTS": value}
    proc = subprocess.run(
        [sys.executable, "-c", CRON_ONLY, str(DAGS)], capture_output=True, text=True, timeout=300, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report == {"errors": {}, "timetable": expected, "expression": "0 */6 * * *"}


def test_check_params_branches(dag):
    from airflow.sdk.exceptions import AirflowFailException

    check = dag.get_task("check_params").python_callable
    assert check(params={"force": False}, triggering_asset_events=asset_events()) == "drift_event"
    assert check(params={"force": True}, triggering_asset_events=asset_events()) == "force_retrain"
    assert check(params={"force": False}, triggering_asset_events={}) == "check_drift"
    assert check(params={"force": False}, triggering_asset_events=asset_events(name="other")) == "check_drift"
    with pytest.raises(AirflowFailException):
        check(params={"force": "1"}, triggering_asset_events=asset_events())


def test_drift_event_returns_the_newest_checked_payload(dag):
    from airflow.sdk.exceptions import AirflowFailException

    event = dag.get_task("drift_event").python_callable
    payload = event(triggering_asset_events=asset_events(n=3))
    assert payload["episode"] == "iris-model:6:3.0" and payload["n"] == 2
    with pytest.raises(AirflowFailException, match="no drift event"):
        event(triggering_asset_events={})
    with pytest.raises(AirflowFailException, match="malformed drift event.*window_epoch"):
        event(triggering_asset_events=asset_events(payload={**PAYLOAD, "window_epoch": None}))


class TI:
    def __init__(self, event):
        self.event = event

    def xcom_pull(self, task_ids=None, **kwargs):
        return self.event if task_ids == "drift_event" else None


def render(dag, ti, params=None):
    from jinja2 import Environment

    submit = dag.get_task("submit_retrain")
    env = Environment()
    macros = {
        **dag.user_defined_macros,
        "mlflow_tracking_uri": lambda: "http://mlflow.test",
        "serving_base_url": lambda: "http://serving.test:8000",
    }
    values = {name: dag.params[name] for name in dag.params.keys()}
    values.update(params or {})
    args = {
        name: env.from_string(tpl).render(params=values, ti=ti, **macros)
        for name, tpl in submit.pipeline_params.items()
    }
    return env.from_string(submit.run_name).render(params=values, ti=ti, **macros), args


def test_event_runs_name_the_kfp_run_after_the_episode_and_train_on_feedback(dag):
    name, args = render(dag, TI(PAYLOAD))
    assert name == "drift-iris-model-v6-e3-r0"
    assert args["feedback_url"] == "http://serving.test:8000/feedback/export"
    # the run's own feedback_url wins
    _, args = render(dag, TI(PAYLOAD), {"feedback_url": "http://elsewhere/export.csv"})
    assert args["feedback_url"] == "http://elsewhere/export.csv"
    # cron / manual / forced runs: the name derived from the DAG run, no feedback unless asked for
    name, args = render(dag, TI(None))
    assert name == "" and args["feedback_url"] == ""


def test_capture_drift_report(dag, monkeypatch):
    from test_drift_events import Server

    capture = dag.get_task("capture_drift_report").python_callable
    srv = Server()
    try:
        set_conn(monkeypatch, "serving_default", srv.url)
        srv.answer(raw="<html><body>report</body></html>", content_type="text/html; charset=utf-8")
        assert capture() == "<html><body>report</body></html>"
        srv.answer({"error": "No model loaded"}, code=503)
        assert capture() is None
        srv.answer({"drift_detected": False})  # JSON, not the page
        assert capture() is None
    finally:
        srv.close()
    set_conn(monkeypatch, "serving_default", f"http://127.0.0.1:{free_port()}")
    assert capture() is None  # serving down: a warning, never a failure
    monkeypatch.delenv("AIRFLOW_CONN_SERVING_DEFAULT")
    assert capture() is None  # no connection: a warning too


# -- whole runs started by a drift event ---------------------------------------------------------
@pytest.fixture
def event_run(monkeypatch):
    """dag.test() runs as if the watcher's asset event had started them: the event is attached to the
    run (its consumed asset events), which is where tasks get ``triggering_asset_events`` from."""
    import airflow.models.dagrun as dagrun_module
    from airflow.models.asset import AssetEvent, AssetModel
    from sqlalchemy import select

    original = dagrun_module.get_or_create_dagrun
    payloads: list[dict] = []

    def with_event(*, dag, session, **kwargs):
        dr = original(dag=dag, session=session, **kwargs)
        if payloads:
            asset = session.scalar(select(AssetModel).where(AssetModel.name == "serving_drift"))
            assert asset is not None, "dag.test() did not register the serving_drift asset"
            event = AssetEvent(asset_id=asset.id, extra={"from_trigger": True, "payload": payloads.pop(0)})
            session.add(event)
            session.flush()
            dr.consumed_asset_events.append(event)
            session.commit()
        return dr

    monkeypatch.setattr(dagrun_module, "get_or_create_dagrun", with_event)
    return payloads


def test_an_event_run_retrains_once_per_episode(dag, stack, event_run):
    stack.set_drift(False)  # the event carries the evidence: /drift/status is not asked again
    stack.model_info["version"] = "7"
    event_run.append(PAYLOAD)
    dr = dag.test()
    assert _states(dr) == {
        "check_params": "success",
        "check_drift": "skipped",
        "drift_event": "success",
        "force_retrain": "skipped",
        "capture_drift_report": "success",  # the stand-in has no /drift/report: None and a warning
        "submit_retrain": "success",
        "confirm_champion": "success",
    }
    assert not any(p.startswith("/drift/status") for p in stack.requests)
    assert any(p.startswith("/drift/report") for p in stack.requests)
    runs = _runs(stack.runs_dir)
    assert [r["display_name"] for r in runs] == ["drift-iris-model-v6-e3-r0"]
    params = runs[0]["params"]
    assert params["run_tag"] == "drift-iris-model-v6-e3-r0"
    assert params["feedback_url"] == f"{stack.url}/feedback/export"
    event = dr.get_task_instance("drift_event").xcom_pull(task_ids="drift_event")
    assert event["episode"] == "iris-model:6:3.0"

    # a second event run for the same episode adopts the KFP run: nothing new is submitted
    event_run.append(PAYLOAD)
    dr2 = dag.test()
    assert _states(dr2)["submit_retrain"] == "success"
    assert len(_runs(stack.runs_dir)) == 1
    # a forced run in between is its own retrain (its name comes from the DAG run)
    dr3 = dag.test(run_conf={"force": True})
    assert _states(dr3)["submit_retrain"] == "success"
    runs = _runs(stack.runs_dir)
    assert len(runs) == 2 and runs[-1]["display_name"].startswith("drift-retrain-submit-retrain-")
    assert {r["params"]["feedback_url"] for r in runs} == {f"{stack.url}/feedback/export", ""}
