"""
### drift_retrain: retrain the model when the serving app reports input drift

Runs every six hours (the safety net), **or as soon as the drift watcher fires** (the asset
`serving_drift`: its watcher `serving_drift_watcher` polls `GET /drift/status` every minute in the
triggerer and fires once per drift episode, on fresh data only, and not while no new labels arrived;
`$DRIFT_RETRAIN_DRIFT_EVENTS=false` turns it off), and whenever you trigger it:

1. **check_params** validates the run's parameters and picks the path: `force=true` skips the drift check;
   a run started by the watcher takes **drift_event**; any other run takes **check_drift**.
2. **check_drift** reads the serving app's `GET /drift/status` (connection `serving_default`).
   *No drift* (or the window is still collecting samples): this task is **skipped**, so are all the
   tasks after it, and the run ends green with nothing submitted. The log says why.
   *Drift*: the drift report (which features, p-values, correction) is logged and kept as XCom.
3. **drift_event** (watcher runs) logs and returns the episode the watcher saw (model version, window
   epoch and rows, drifted features, p-values, labelled rows). Such a run trains on the serving app's
   labelled feedback (`feedback_url` defaults to `<serving>/feedback/export`) and names its KFP run after
   the episode (`drift-<model>-v<version>-e<epoch>-r<resets>`): a second run for the same episode adopts
   that KFP run instead of retraining again.
4. **capture_drift_report** (after drift was found) keeps the serving app's `GET /drift/report` page;
   if it cannot, a warning, never a failure.
5. **force_retrain** is the path taken instead of the check when `force=true`.
6. **submit_retrain** submits the compiled KFP pipeline `ml-retrain-pipeline`
   (`kfp_components/retrain_pipeline.yaml`) on the backend of connection `kfp_default`
   (`local`: kfp.local runner on this machine; `kfp`: a Kubeflow Pipelines API) and waits for it
   *deferred*, without holding a worker slot. The run name is derived from this DAG run (or the drift
   episode), so a retried task finds its own run instead of starting a second one. Afterwards the drift
   report is stored with the candidate's MLflow run (`drift/report.html`). Buttons: *KFP run*,
   *MLflow run*, *Drift report*.
7. **confirm_champion** reads what the pipeline decided: a *rejected* candidate is a successful run
   (the reason is logged and returned); an *accepted* one must show up as the version the serving
   app's `GET /model/info` reports.

**Trigger by hand**: the UI's *Trigger* button opens a form with every parameter (tick `force` to
skip the drift check; `data_uri`, `feedback_url`, `mlflow_tracking_uri` and `serving_url` may stay empty = their
default), or the REST API / CLI: `airflow dags trigger drift_retrain --conf '{"force": true}'`.
Every pipeline parameter can be set the same way, e.g. `{"force": true, "min_accuracy": 0.95}`.

A failure logs one line starting with `ALERT` (and posts it to the webhook connection named by
`$DRIFT_RETRAIN_ALERT_CONN_ID`, if set). Connections, defaults and troubleshooting: `docs/airflow.md`.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import pendulum
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import Asset, AssetOrTimeSchedule, AssetWatcher, CronTriggerTimetable, Param, dag, task

from driftloop.contract import DAG_ID, DEFAULT_MODEL_NAME
from driftloop.retrain.alerts import failure_alert
from driftloop.retrain.drift import DriftStatusSensor
from driftloop.retrain.drift_events import DriftEventTrigger
from driftloop.retrain.episodes import run_name as episode_run_name
from driftloop.retrain.operator import RetrainPipelineOperator
from driftloop.retrain.settings import (
    KFP_CONN_ID,
    SERVING_CONN_ID,
    mlflow_tracking_uri,
    param_default,
    pipeline_package,
    serving_base_url,
)

log = logging.getLogger(__name__)

D = param_default  # defaults can be overridden with $DRIFT_RETRAIN_<NAME> (read from the environment only)

#: JSON-schema type of the string params whose empty value means "use the default". Airflow's trigger
#: form treats a param as required unless its type includes "null": with type="string" and an empty
#: default the form shows an error and its Trigger button stays disabled. The form sends a cleared
#: field as null, the REST API may send null or "": downstream, None and "" mean the same (see
#: PIPELINE_ARGUMENTS and confirm_champion).
OPTIONAL_STRING = ["null", "string"]

#: The pipeline's parameters (docs/contracts.md), with the DAG's defaults. run_tag is set by the operator.
PIPELINE_PARAMS = {
    "data_uri": Param(
        D("data_uri", None),
        type=OPTIONAL_STRING,
        description="Training data: CSV/Parquet path or URL. Empty = the bundled iris data.",
    ),
    "label_column": Param(
        D("label_column", "target"),
        type="string",
        minLength=1,
        description="Name of the label column in the training data.",
    ),
    "feedback_url": Param(
        D("feedback_url", None),
        type=OPTIONAL_STRING,
        description="URL of labelled feedback rows to train on as well "
        "(the serving app's /feedback/export). Empty = none.",
    ),
    "mlflow_tracking_uri": Param(
        D("mlflow_tracking_uri", None),
        type=OPTIONAL_STRING,
        description="MLflow tracking URI the pipeline uses. Empty = "
        "$MLFLOW_TRACKING_URI of the Airflow worker, else http://127.0.0.1:5000.",
    ),
    "experiment_name": Param(
        D("experiment_name", "retrain"),
        type="string",
        minLength=1,
        description="MLflow experiment of the training runs.",
    ),
    "model_name": Param(
        D("model_name", DEFAULT_MODEL_NAME),
        type="string",
        minLength=1,
        description="Registered model name; the served version has alias 'champion'.",
    ),
    "min_accuracy": Param(
        D("min_accuracy", 0.9),
        type="number",
        minimum=0,
        maximum=1,
        description="A candidate below this held-out accuracy is rejected.",
    ),
    "tolerance": Param(
        D("tolerance", 0.0),
        type="number",
        minimum=0,
        description="How much worse than the current champion a candidate may be.",
    ),
    "n_estimators": Param(
        D("n_estimators", 100), type="integer", minimum=1, description="RandomForest: number of trees."
    ),
    "max_depth": Param(
        D("max_depth", 0), type="integer", minimum=0, description="RandomForest: maximum depth, 0 = unlimited."
    ),
    "random_state": Param(D("random_state", 42), type="integer", description="Seed."),
    "test_size": Param(
        D("test_size", 0.2),
        type="number",
        exclusiveMinimum=0,
        exclusiveMaximum=1,
        description="Held-out fraction for validation.",
    ),
    "deploy_target": Param(
        D("deploy_target", "local"),
        type="string",
        enum=["local", "kubernetes", "none"],
        description="local: reload the serving app; kubernetes: roll its Deployment; none: register only.",
    ),
    "serving_url": Param(
        D("serving_url", None),
        type=OPTIONAL_STRING,
        description=f"Serving app URL for the deploy step. Empty = the URL of connection '{SERVING_CONN_ID}'.",
    ),
    "k8s_namespace": Param(
        D("k8s_namespace", "mlops"),
        type="string",
        description="deploy_target=kubernetes: namespace of the serving Deployment.",
    ),
    "k8s_deployment": Param(
        D("k8s_deployment", "ml-api"),
        type="string",
        description="deploy_target=kubernetes: name of the serving Deployment.",
    ),
}

#: The params that may be left empty (None or ""): the pipeline then uses its own default.
OPTIONAL_PARAMS = frozenset(name for name, p in PIPELINE_PARAMS.items() if p.schema.get("type") == OPTIONAL_STRING)

#: How each pipeline parameter is filled in when the task runs (strings; the operator converts them to
#: the types the compiled pipeline declares). An empty optional param renders as "" (never "None").
PIPELINE_ARGUMENTS = {
    name: ("{{ params.%s or '' }}" if name in OPTIONAL_PARAMS else "{{ params.%s }}") % name for name in PIPELINE_PARAMS
}
PIPELINE_ARGUMENTS["mlflow_tracking_uri"] = "{{ params.mlflow_tracking_uri or mlflow_tracking_uri() }}"
PIPELINE_ARGUMENTS["serving_url"] = "{{ params.serving_url or serving_base_url() }}"
# A retrain started by a drift event learns from what people labelled: the serving app's feedback
# export unless the run says otherwise (the pipeline sends the admin token the export needs).
PIPELINE_ARGUMENTS["feedback_url"] = (
    "{{ params.feedback_url or ((serving_base_url() ~ '/feedback/export') "
    "if ti.xcom_pull(task_ids='drift_event') else '') }}"
)

CRON = "0 */6 * * *"
#: The serving app's drift, as an asset: the watcher's trigger polls GET /drift/status and fires one
#: event per drift episode (driftloop.retrain.episodes). Nothing is looked up here: the trigger reads
#: the connection when it runs in the triggerer.
SERVING_DRIFT = Asset(
    name="serving_drift",
    watchers=[
        AssetWatcher(
            name="serving_drift_watcher",
            trigger=DriftEventTrigger(
                http_conn_id=SERVING_CONN_ID, poll_interval=float(param_default("drift_poll_interval", 60.0))
            ),
        )
    ],
)
#: Cron as the safety net, or the drift event; $DRIFT_RETRAIN_DRIFT_EVENTS=false: the cron only.
SCHEDULE: Any = (
    AssetOrTimeSchedule(timetable=CronTriggerTimetable(CRON, timezone="UTC"), assets=SERVING_DRIFT)
    if param_default("drift_events", True)
    else CRON
)
#: The KFP run name of an event run: one per drift episode, so a second DAG run for the same episode
#: adopts the first one's KFP run (the operator's find-or-submit). Empty: derived from the DAG run.
RUN_NAME = "{{ episode_run_name(ti.xcom_pull(task_ids='drift_event')) }}"

FORCE_HELP = (
    "trigger again with a JSON boolean, e.g. airflow dags trigger drift_retrain --conf '{\"force\": true}' "
    "(or false to check for drift first)"
)


@dag(
    dag_id=DAG_ID,
    description="Retrain through Kubeflow Pipelines when the serving app reports drift (or when forced).",
    doc_md=__doc__,
    schedule=SCHEDULE,
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=4),
    tags=["mlops", "drift", "kfp", "retrain"],
    params={
        "force": Param(D("force", False), type="boolean", description="Retrain without checking for drift first."),
        **PIPELINE_PARAMS,
    },
    user_defined_macros={
        "mlflow_tracking_uri": mlflow_tracking_uri,
        "serving_base_url": serving_base_url,
        "pipeline_package": pipeline_package,
        "episode_run_name": episode_run_name,
    },
    on_failure_callback=failure_alert,
    default_args={
        "owner": "mlops",
        "retries": 0,
        "on_failure_callback": failure_alert,
    },
)
def drift_retrain() -> None:
    @task.branch(task_id="check_params")
    def check_params(params: dict[str, Any] | None = None, triggering_asset_events: Any = None) -> str:
        """Fail on a non-boolean force (nothing submitted); choose the forced path, the drift event's
        path (a run the watcher started) or the drift check."""
        from airflow.sdk.exceptions import AirflowFailException

        from driftloop.retrain.drift_event_run import drift_events_of

        force = (params or {}).get("force", False)
        if not isinstance(force, bool):
            raise AirflowFailException(
                f"param 'force' must be a JSON boolean (true or false), got {force!r} "
                f"({type(force).__name__}); nothing was submitted. Fix: {FORCE_HELP}"
            )
        if force:
            log.info("force=true: skipping the drift check; the pipeline is submitted now.")
            return "force_retrain"
        if drift_events_of(triggering_asset_events, SERVING_DRIFT.name):
            log.info("Started by the drift watcher (asset %s): the event's evidence is used.", SERVING_DRIFT.name)
            return "drift_event"
        return "check_drift"

    @task(task_id="drift_event")
    def drift_event(triggering_asset_events: Any = None) -> dict[str, Any]:
        """The drift episode that started this run (the watcher's event payload), checked and logged."""
        from driftloop.retrain.drift_event_run import event_payload

        return event_payload(triggering_asset_events, SERVING_DRIFT.name)

    check_drift = DriftStatusSensor(
        task_id="check_drift",
        http_conn_id=SERVING_CONN_ID,
        poke_interval=10,
        timeout=300,
        max_unreachable=3,
    )
    force_retrain = EmptyOperator(task_id="force_retrain")

    # Runs after drift was found (by the check or by the watcher); never fails the run.
    @task(task_id="capture_drift_report", trigger_rule="none_failed_min_one_success")
    def capture_drift_report() -> str | None:
        """GET /drift/report (HTML) from the serving app, to store with the candidate's MLflow run."""
        from driftloop.retrain.drift_event_run import capture_report

        return capture_report(SERVING_CONN_ID)

    submit_retrain = RetrainPipelineOperator(
        task_id="submit_retrain",
        kfp_conn_id=KFP_CONN_ID,
        # $KFP_PIPELINE_PACKAGE, else kfp_components/retrain_pipeline.yaml (resolved when the task runs)
        pipeline_package="{{ pipeline_package() }}",
        pipeline_params=PIPELINE_ARGUMENTS,
        run_name=RUN_NAME,
        # the pipeline tags its MLflow run with the run name (retrain_run), so the outcome can be found
        run_name_param="run_tag",
        report_task_id="capture_drift_report",
        deferrable=True,
        poll_interval=float(param_default("poll_interval", 15.0)),
        timeout=timedelta(hours=2),
        # Runs when exactly one path before it succeeded: after drift was found, or when forced.
        # When check_drift is skipped for lack of drift, every path is skipped and so is this task.
        trigger_rule="none_failed_min_one_success",
        retries=1,
        retry_delay=timedelta(minutes=2),
    )

    @task(task_id="confirm_champion")
    def confirm_champion(run: dict[str, Any], params: dict[str, Any] | None = None) -> dict[str, Any]:
        """What did the pipeline decide, and does the serving app serve the new champion?"""
        from driftloop.retrain.champion import confirm_champion as confirm

        params = params or {}
        return confirm(
            run,
            http_conn_id=SERVING_CONN_ID,
            model_name=params.get("model_name", DEFAULT_MODEL_NAME),
            deploy_target=params.get("deploy_target", "local"),
            mlflow_tracking_uri=params.get("mlflow_tracking_uri") or mlflow_tracking_uri(),
        )

    event = drift_event()
    report = capture_drift_report()
    check_params() >> [check_drift, event, force_retrain]
    [check_drift, event] >> report
    [report, force_retrain] >> submit_retrain
    confirm_champion(submit_retrain.output)  # type: ignore[arg-type]  # an XComArg, resolved at run time


drift_retrain()
