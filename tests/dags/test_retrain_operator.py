"""RetrainPipelineOperator: after a successful pipeline run, the drift report goes into the candidate's
MLflow run (a real MLflow server) and the links into XCom; its bookkeeping never fails the task.
The plugin registers the links with Airflow."""

from __future__ import annotations

import pytest

from driftloop.retrain.links import XCOM_DRIFT_REPORT_URL, XCOM_MLFLOW_RUN_URL, DriftReportLink, MlflowRunLink
from driftloop.retrain.operator import RetrainPipelineOperator

REPORT = "<!doctype html><html><body><h1>Drift report</h1><svg></svg></body></html>"


class FakeTI:
    def __init__(self, report=REPORT):
        self.pushed: dict = {}
        self.report = report

    def xcom_push(self, key, value):
        self.pushed[key] = value

    def xcom_pull(self, task_ids=None, key="return_value", **kwargs):
        return self.report if task_ids == "capture_drift_report" else None


def success(mlflow_run_id):
    outcome = {"mlflow_run_id": mlflow_run_id, "decision": "accepted", "registered_version": "7", "reason": "ok"}
    return {
        "status": "success",
        "run_id": "k1",
        "message": "run succeeded",
        "run": {"run_id": "k1", "display_name": "drift-iris-model-v6-e3-r0", "outputs": {"outcome": outcome}},
    }


@pytest.fixture
def mlflow_run(mlflow_server):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server)
    name = "operator-tests"
    exp = client.get_experiment_by_name(name)
    exp_id = exp.experiment_id if exp else client.create_experiment(name)
    run = client.create_run(exp_id)
    client.set_terminated(run.info.run_id)
    return client, exp_id, run.info.run_id


def operator(url, **kwargs):
    return RetrainPipelineOperator(task_id="submit_retrain", pipeline_params={"mlflow_tracking_uri": url}, **kwargs)


def test_report_stored_with_the_mlflow_run_and_links_pushed(mlflow_server, mlflow_run, monkeypatch):
    client, exp_id, run_id = mlflow_run
    monkeypatch.delenv("DRIFT_RETRAIN_MLFLOW_UI_URL", raising=False)
    ti = FakeTI()
    event = success(run_id)
    assert operator(mlflow_server).execute_complete({"ti": ti}, event) == event["run"]
    local = client.download_artifacts(run_id, "drift/report.html")
    with open(local, encoding="utf-8") as fh:
        assert fh.read() == REPORT
    base = f"{mlflow_server.rstrip('/')}/#/experiments/{exp_id}/runs/{run_id}"
    assert ti.pushed == {
        XCOM_MLFLOW_RUN_URL: base,
        XCOM_DRIFT_REPORT_URL: f"{base}/artifactPath/drift/report.html",
    }


def test_the_ui_url_setting_wins_over_the_tracking_uri(mlflow_server, mlflow_run, monkeypatch):
    _, exp_id, run_id = mlflow_run
    monkeypatch.setenv("DRIFT_RETRAIN_MLFLOW_UI_URL", "https://mlflow.example.org/")
    ti = FakeTI(report=None)  # a forced run: no report captured
    operator(mlflow_server).execute_complete({"ti": ti}, success(run_id))
    assert ti.pushed == {XCOM_MLFLOW_RUN_URL: f"https://mlflow.example.org/#/experiments/{exp_id}/runs/{run_id}"}


def test_bookkeeping_failures_are_warnings(mlflow_server, mlflow_run, monkeypatch, capsys):
    from mlflow.tracking import MlflowClient

    _, _, run_id = mlflow_run
    # an MLflow run that does not exist
    ti = FakeTI()
    event = success("0" * 32)
    assert operator(mlflow_server).execute_complete({"ti": ti}, event) == event["run"]
    assert ti.pushed == {}
    assert "[warning  ] Could not record the drift report / MLflow links: RestException" in capsys.readouterr().out
    # storing the report fails: the MLflow link is still there, the report link is not

    def refuse(*args, **kwargs):
        raise PermissionError("artifact store refused the write")

    monkeypatch.setattr(MlflowClient, "log_text", refuse)
    ti = FakeTI()
    operator(mlflow_server).execute_complete({"ti": ti}, success(run_id))
    assert set(ti.pushed) == {XCOM_MLFLOW_RUN_URL}
    assert "PermissionError: artifact store refused the write" in capsys.readouterr().out


def test_no_outcome_run_id_is_a_warning(capsys):
    ti = FakeTI()
    event = success(None)
    assert operator("http://127.0.0.1:9").execute_complete({"ti": ti}, event) == event["run"]
    assert ti.pushed == {}
    assert "names no MLflow run" in capsys.readouterr().out


def test_a_failed_pipeline_still_fails_the_task():
    from airflow.sdk.exceptions import AirflowException

    with pytest.raises(AirflowException, match="step failed"):
        operator("http://127.0.0.1:9").execute_complete(
            {"ti": FakeTI()}, {"status": "failed", "run_id": "k1", "message": "step failed"}
        )


def test_links_read_their_xcom(monkeypatch):
    from airflow.sdk.execution_time.xcom import XCom

    values = {XCOM_MLFLOW_RUN_URL: "http://m/#/experiments/1/runs/r", XCOM_DRIFT_REPORT_URL: None}
    monkeypatch.setattr(XCom, "get_value", classmethod(lambda cls, *, ti_key, key: values.get(key)))
    op = operator("")
    assert MlflowRunLink().get_link(op, ti_key=None) == values[XCOM_MLFLOW_RUN_URL]
    assert DriftReportLink().get_link(op, ti_key=None) == ""
    assert [link.name for link in op.operator_extra_links] == ["KFP run", "MLflow run", "Drift report"]


def test_the_plugin_registers_the_links_and_the_dag_serializes_them():
    from airflow import plugins_manager
    from airflow.dag_processing.dagbag import DagBag
    from airflow.serialization.serialized_objects import DagSerialization
    from kfp_test_fixtures import REPO

    registered = {type(link) for link in plugins_manager.get_operator_extra_links()}
    assert {MlflowRunLink, DriftReportLink} <= registered
    dag = DagBag(dag_folder=str(REPO / "dags")).dags["drift_retrain"]
    submit = next(t for t in DagSerialization.to_dict(dag)["dag"]["tasks"] if t["__var"]["task_id"] == "submit_retrain")
    assert set(submit["__var"]["_operator_extra_links"]) == {"KFP run", "MLflow run", "Drift report"}
