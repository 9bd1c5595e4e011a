"""The drift_retrain DAG: parse-time contract (imports, no lookups, < 1 s) and whole runs with dag.test().

The dag.test() runs here use a stand-in serving app (tests/airflow_kfp_provider kfp_test_fixtures
FakeServing) and the local backend with a stand-in runner that honours run_local's contract
(fake_run_local.py), against the project's real compiled pipeline YAML (its real parameters). The
end-to-end run against a real MLflow server, the real serving app and the real runner is in
test_drift_retrain_e2e.py.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from dag_runs import local_runs as _runs
from dag_runs import parse_dag
from dag_runs import task_states as _states
from kfp_test_fixtures import REPO

DAGS = REPO / "dags"
PIPELINE_YAML = REPO / "kfp_components" / "retrain_pipeline.yaml"

PARSE_CHECK = textwrap.dedent("""
    import json, sys, time
    # What the dag-processor has loaded before it parses a file: Airflow itself.
    import airflow.sdk
    from airflow.sdk import BaseOperator, BaseSensorOperator, Param, dag, task
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk.bases.hook import BaseHook
    from airflow.sdk.definitions.connection import Connection
    from airflow.sdk.definitions.variable import Variable

    lookups = []
    def forbid(kind):
        def _f(*args, **kwargs):
            lookups.append(f"{kind}{args[-1:] if args else ''}")
            raise AssertionError(f"{kind} looked up at parse time")
        return _f
    BaseHook.get_connection = classmethod(forbid("connection"))
    Connection.get = classmethod(forbid("connection"))
    Variable.get = staticmethod(forbid("variable"))

    t0 = time.perf_counter()
    bag = DagBag(dag_folder=sys.argv[1])
    elapsed = time.perf_counter() - t0
    heavy = [m for m in ("kfp", "kfp_server_api", "mlflow", "sklearn", "requests",
                         "airflow.providers.http.hooks.http", "kfp_components") if m in sys.modules]
    print(json.dumps({
        "errors": {k: str(v) for k, v in bag.import_errors.items()},
        "dags": {d.dag_id: d.fileloc for d in bag.dags.values()},
        "files": {str(s.file): s.duration.total_seconds() for s in bag.dagbag_stats},
        "elapsed": elapsed, "lookups": lookups, "heavy": heavy,
    }))
""")


@pytest.fixture(scope="module")
def parse_report():
    """Parse the whole dags/ folder in a fresh interpreter, the way the dag-processor does."""
    proc = subprocess.run(
        [sys.executable, "-c", PARSE_CHECK, str(DAGS)], capture_output=True, text=True, timeout=300, env={**os.environ}
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_every_dag_file_imports_without_errors(parse_report):
    assert parse_report["errors"] == {}
    files = sorted(p.name for p in DAGS.glob("*.py"))
    assert sorted(Path(f).name for f in parse_report["files"]) == files
    assert set(parse_report["dags"]) >= {"drift_retrain"}
    # one DAG a file
    assert len(set(parse_report["dags"].values())) == len(parse_report["dags"])


def test_parsing_makes_no_lookups_and_no_heavy_imports(parse_report):
    assert parse_report["lookups"] == []
    assert parse_report["heavy"] == []


def test_each_dag_file_parses_in_under_a_second(parse_report):
    slow = {f: s for f, s in parse_report["files"].items() if s >= 1.0}
    assert not slow, f"DAG files slower than 1 s to parse: {slow}"


# -- the DAG's contract ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dag():
    return parse_dag(DRIFT_RETRAIN_POLL_INTERVAL="0.3")  # read when the DAG file is parsed


def test_schedule_and_run_policy(dag):
    assert dag.dag_id == "drift_retrain"
    # the six-hour cron as the safety net, or the drift watcher's asset event
    from airflow.sdk import AssetOrTimeSchedule

    assert isinstance(dag.timetable, AssetOrTimeSchedule)
    assert dag.timetable.timetable.expression == "0 */6 * * *"
    assert dag.catchup is False
    assert dag.max_active_runs == 1
    assert "drift" in dag.doc_md and "force" in dag.doc_md
    assert dag.on_failure_callback


def test_params_are_typed_and_match_the_compiled_pipeline(dag):
    from airflow_kfp_provider.pipeline_spec import load_pipeline_spec, pipeline_parameters

    force = dag.params.get_param("force")
    assert force.value is False and force.schema["type"] == "boolean"
    declared = pipeline_parameters(load_pipeline_spec(PIPELINE_YAML))
    dag_params = {k: dag.params.get_param(k) for k in dag.params.keys() if k != "force"}
    assert set(dag_params) == set(declared) - {"run_tag"}
    json_types = {"STRING": "string", "NUMBER_INTEGER": "integer", "NUMBER_DOUBLE": "number"}
    # Params whose empty value means "the default": optional in the UI's trigger form (type includes
    # "null", default None); every other param is required there and has the pipeline's default.
    optional = {"data_uri", "feedback_url", "mlflow_tracking_uri", "serving_url"}
    for name, param in dag_params.items():
        if name in optional:
            assert declared[name]["type"] == "STRING", name
            assert param.schema["type"] == ["null", "string"], name
            assert param.value is None, name  # the pipeline's default is "": None and "" mean the same
            if name not in ("mlflow_tracking_uri", "serving_url"):  # these two are resolved at run time
                assert declared[name]["default"] == "", name
            continue
        assert param.schema["type"] == json_types[declared[name]["type"]], name
        default = declared[name]["default"]
        assert param.value == (int(default) if declared[name]["type"] == "NUMBER_INTEGER" else default), name


def test_the_ui_trigger_form_opens_valid(dag):
    """Airflow's trigger form marks a param required unless its type includes "null", and a required
    param with an empty (None or "") value keeps the Trigger button disabled (FlexibleForm/isParamRequired
    of the Airflow 3.3 UI). Every param's default must also validate against its own schema."""

    for name in dag.params.keys():
        param = dag.params.get_param(name)
        types = param.schema.get("type")
        required = bool(types) and not (isinstance(types, list) and "null" in types)
        if required:
            assert param.value not in (None, ""), f"{name}: required in the form but empty by default"
    copy.deepcopy(dag.params).validate()  # the defaults are valid (what a scheduled run uses)


def test_empty_optional_params_render_as_empty_strings_never_none(dag):
    """None (the form's cleared field, REST null, the default) and "" reach the pipeline as ""."""
    from jinja2 import Environment

    submit = dag.get_task("submit_retrain")
    env = Environment()
    macros = {"mlflow_tracking_uri": lambda: "http://mlflow.test", "serving_base_url": lambda: "http://serving.test"}
    for empty in (None, ""):
        params = {name: dag.params[name] for name in dag.params.keys()}
        params.update(data_uri=empty, feedback_url=empty, mlflow_tracking_uri=empty, serving_url=empty)
        rendered = {
            name: env.from_string(tpl).render(params=params, ti=NoEventTI(), **macros)
            for name, tpl in submit.pipeline_params.items()
        }
        assert rendered["data_uri"] == "" and rendered["feedback_url"] == "", empty
        assert (
            rendered["mlflow_tracking_uri"] == "http://mlflow.test" and rendered["serving_url"] == "http://serving.test"
        )
        assert "None" not in rendered.values()
    params.update(data_uri="/data/x.csv", feedback_url="http://s/feedback/export")
    rendered = {
        name: env.from_string(tpl).render(params=params, ti=NoEventTI(), **macros)
        for name, tpl in submit.pipeline_params.items()
    }
    assert rendered["data_uri"] == "/data/x.csv" and rendered["feedback_url"] == "http://s/feedback/export"
    assert rendered["min_accuracy"] == "0.9" and rendered["n_estimators"] == "100"


class NoEventTI:
    """A task instance of a run without a drift event (drift_event skipped: its XCom is None)."""

    def xcom_pull(self, task_ids=None, **kwargs):
        return None


def test_task_graph(dag):
    tasks = {t.task_id: t for t in dag.tasks}
    assert set(tasks) == {
        "check_params",
        "check_drift",
        "drift_event",
        "force_retrain",
        "capture_drift_report",
        "submit_retrain",
        "confirm_champion",
    }
    assert tasks["check_params"].downstream_task_ids == {"check_drift", "drift_event", "force_retrain"}
    assert tasks["capture_drift_report"].upstream_task_ids == {"check_drift", "drift_event"}
    assert tasks["capture_drift_report"].trigger_rule == "none_failed_min_one_success"
    assert tasks["submit_retrain"].upstream_task_ids == {"capture_drift_report", "force_retrain"}
    assert tasks["submit_retrain"].trigger_rule == "none_failed_min_one_success"
    assert tasks["confirm_champion"].upstream_task_ids == {"submit_retrain"}
    submit = tasks["submit_retrain"]
    assert submit.deferrable and submit.kfp_conn_id == "kfp_default" and submit.run_name_param == "run_tag"
    assert set(submit.pipeline_params) == set(dag.params.keys()) - {"force"}
    assert all(t.on_failure_callback for t in dag.tasks)


def test_check_params_rejects_a_non_boolean_force(dag):
    from airflow.sdk.exceptions import AirflowFailException

    check = dag.get_task("check_params").python_callable
    assert check(params={"force": True}) == "force_retrain"
    assert check(params={"force": False}) == "check_drift"
    with pytest.raises(AirflowFailException) as err:
        check(params={"force": "yes"})
    assert "'force' must be a JSON boolean" in str(err.value) and '{"force": true}' in str(err.value)


# -- whole runs with dag.test() ------------------------------------------------------------------
def test_no_drift_submits_nothing_and_skips_downstream(dag, stack):
    stack.set_drift(False)
    dr = dag.test()
    assert str(getattr(dr.state, "value", dr.state)) == "success"
    assert _states(dr) == {
        "check_params": "success",
        "check_drift": "skipped",
        "drift_event": "skipped",
        "force_retrain": "skipped",
        "capture_drift_report": "skipped",
        "submit_retrain": "skipped",
        "confirm_champion": "skipped",
    }
    assert any(p.startswith("/drift/status") for p in stack.requests)
    assert _runs(stack.runs_dir) == []


def test_drift_submits_one_run_and_confirms_the_new_champion(dag, stack):
    stack.set_drift(True)
    stack.model_info["version"] = "7"  # what the deploy step would have made the app serve
    dr = dag.test()
    assert _states(dr) == {
        "check_params": "success",
        "check_drift": "success",
        "drift_event": "skipped",
        "force_retrain": "skipped",
        "capture_drift_report": "success",
        "submit_retrain": "success",
        "confirm_champion": "success",
    }
    runs = _runs(stack.runs_dir)
    assert len(runs) == 1 and runs[0]["state"] == "SUCCEEDED"
    params = runs[0]["params"]
    assert params["run_tag"] == runs[0]["display_name"]
    assert params["run_tag"].startswith("drift-retrain-submit-retrain-")
    assert params["min_accuracy"] == 0.9 and params["n_estimators"] == 100 and params["deploy_target"] == "local"
    assert params["serving_url"] == stack.url  # empty param -> the serving_default connection's URL
    assert params["mlflow_tracking_uri"]  # empty param -> $MLFLOW_TRACKING_URI or the embedded default
    confirm = dr.get_task_instance("confirm_champion")
    assert confirm.xcom_pull(task_ids="confirm_champion")["served_version"] == "7"
    assert confirm.xcom_pull(task_ids="submit_retrain", key="run_id") == runs[0]["run_id"]


def test_force_skips_the_check_and_a_rejected_candidate_is_a_success(dag, stack, monkeypatch):
    stack.set_drift(False)
    monkeypatch.setenv("FAKE_RUNNER_MODE", "reject")
    dr = dag.test(run_conf={"force": True, "min_accuracy": 0.95})
    assert str(getattr(dr.state, "value", dr.state)) == "success"
    assert _states(dr) == {
        "check_params": "success",
        "check_drift": "skipped",
        "drift_event": "skipped",
        "force_retrain": "success",
        "capture_drift_report": "skipped",
        "submit_retrain": "success",
        "confirm_champion": "success",
    }
    assert not any(p.startswith("/drift/status") for p in stack.requests)
    runs = _runs(stack.runs_dir)
    assert len(runs) == 1 and runs[0]["params"]["min_accuracy"] == 0.95
    result = dr.get_task_instance("confirm_champion").xcom_pull(task_ids="confirm_champion")
    assert result["decision"] == "rejected" and "min_accuracy" in result["reason"]


def test_null_optional_params_as_the_ui_form_sends_them(dag, stack):
    """The trigger form sends a cleared optional field as null: the run uses the defaults, not "None"."""
    stack.set_drift(False)
    stack.model_info["version"] = "7"  # what the stand-in runner registers
    dr = dag.test(
        run_conf={
            "force": True,
            "data_uri": None,
            "feedback_url": None,
            "mlflow_tracking_uri": None,
            "serving_url": None,
        }
    )
    assert str(getattr(dr.state, "value", dr.state)) == "success"
    runs = _runs(stack.runs_dir)
    assert len(runs) == 1
    params = runs[0]["params"]
    assert params["data_uri"] == "" and params["feedback_url"] == ""
    assert params["serving_url"] == stack.url
    assert params["mlflow_tracking_uri"] and params["mlflow_tracking_uri"] != "None"


def test_a_non_boolean_force_is_refused_and_nothing_is_submitted(dag, stack):
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError, match="Invalid input for param force: 'yes' is not of type 'boolean'"):
        dag.test(run_conf={"force": "yes"})
    assert _runs(stack.runs_dir) == []
