"""The DAG's own pieces (driftloop.retrain): after the run, the outcome decides what 'confirmed' means;
failures log one ALERT line."""

from __future__ import annotations

import logging
import sys
import types

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from driftloop.retrain.alerts import alert_text, failure_alert
from driftloop.retrain.champion import confirm_champion

ACCEPTED = {
    "display_name": "r1",
    "run_id": "k1",
    "outputs": {"outcome": {"decision": "accepted", "registered_version": "7", "reason": "ok", "mlflow_run_id": "m1"}},
}


def test_accepted_and_served(serving):
    serving.model_info["version"] = "7"
    result = confirm_champion(ACCEPTED, wait_seconds=1, interval=0.1)
    assert result["decision"] == "accepted" and result["served_version"] == "7"


def test_accepted_but_serving_stays_on_the_old_version(serving):
    serving.model_info["version"] = "6"
    with pytest.raises(AirflowException, match="version 7 was accepted.*reports version '6'.*model/reload"):
        confirm_champion(ACCEPTED, wait_seconds=0.3, interval=0.1)


def test_rejected_is_a_success_with_the_reason(serving):
    run = {"display_name": "r1", "outputs": {"outcome": {"decision": "rejected", "reason": "accuracy 0.5 < 0.9"}}}
    result = confirm_champion(run)
    assert result == {
        "run_name": "r1",
        "kfp_run_id": None,
        "mlflow_run_id": None,
        "decision": "rejected",
        "reason": "accuracy 0.5 < 0.9",
        "registered_version": None,
        "served_version": None,
    }
    assert serving.requests == []


def test_deploy_target_none_does_not_ask_serving(serving):
    assert confirm_champion(ACCEPTED, deploy_target="none")["registered_version"] == "7"
    assert serving.requests == []


def test_other_model_name_is_not_checked(serving):
    assert confirm_champion(ACCEPTED, model_name="other-model")["served_version"] is None


def test_outcome_from_mlflow_when_the_run_has_none(monkeypatch, serving):
    calls = []
    fake = types.ModuleType("kfp_components.outcome")
    fake.find_outcome = lambda uri, tag: calls.append((uri, tag)) or {"decision": "rejected", "reason": "worse"}
    monkeypatch.setitem(sys.modules, "kfp_components.outcome", fake)
    result = confirm_champion({"display_name": "kfp-run-name", "outputs": {}}, mlflow_tracking_uri="http://m:5000")
    assert calls == [("http://m:5000", "kfp-run-name")] and result["decision"] == "rejected"


def test_unknown_outcome_fails(monkeypatch):
    fake = types.ModuleType("kfp_components.outcome")
    fake.find_outcome = lambda uri, tag: {"decision": "unknown", "reason": "no MLflow run"}
    monkeypatch.setitem(sys.modules, "kfp_components.outcome", fake)
    with pytest.raises(AirflowFailException, match="cannot tell what pipeline run 'x' decided"):
        confirm_champion({"display_name": "x", "outputs": {}}, mlflow_tracking_uri="http://m:5000")


def test_missing_serving_connection(monkeypatch):
    monkeypatch.delenv("AIRFLOW_CONN_SERVING_DEFAULT", raising=False)
    with pytest.raises(AirflowFailException, match="AIRFLOW_CONN_SERVING_DEFAULT"):
        confirm_champion(ACCEPTED, wait_seconds=0)


def test_alert_line_for_a_task_and_for_a_dag_run(caplog):
    ti = types.SimpleNamespace(dag_id="drift_retrain", task_id="submit_retrain", run_id="manual__1")
    text = alert_text({"ti": ti, "exception": ValueError("KFP run x ended FAILED:\n boom")})
    assert text == "ALERT dag=drift_retrain task=submit_retrain run=manual__1 failed: KFP run x ended FAILED: boom"
    dag_run = types.SimpleNamespace(dag_id="drift_retrain", run_id="scheduled__2")
    assert alert_text({"dag_run": dag_run, "reason": "task_failure"}).startswith(
        "ALERT dag=drift_retrain run=scheduled__2 dag run failed (task_failure)"
    )
    with caplog.at_level(logging.ERROR, logger="driftloop.retrain.alerts"):
        failure_alert({"ti": ti, "exception": RuntimeError("x")})
    assert any(r.message.startswith("ALERT dag=drift_retrain task=submit_retrain") for r in caplog.records)


def test_alert_webhook(monkeypatch):
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from kfp_test_fixtures import set_conn

    got = []

    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):
            got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        set_conn(monkeypatch, "alerts_webhook", f"http://127.0.0.1:{httpd.server_address[1]}")
        monkeypatch.setenv("DRIFT_RETRAIN_ALERT_CONN_ID", "alerts_webhook")
        ti = types.SimpleNamespace(dag_id="d", task_id="t", run_id="r")
        failure_alert({"ti": ti, "exception": RuntimeError("boom")})
        assert got == [{"text": "ALERT dag=d task=t run=r failed: boom"}]
        monkeypatch.setenv("DRIFT_RETRAIN_ALERT_CONN_ID", "no_such_conn")
        failure_alert({"ti": ti, "exception": RuntimeError("boom")})  # never raises
    finally:
        httpd.shutdown()
        httpd.server_close()
