"""RetrainPipelineOperator: the provider's KFP operator, plus what this project records after a retrain.

After the pipeline run succeeded (``execute_complete``, also when a retry adopted a finished run) it

1. resolves the run's outcome (``driftloop.retrain.champion.resolve_outcome``: the outcome file of the
   local backend, else MLflow by the run's name) and from it the candidate's ``mlflow_run_id``;
2. stores the drift report the DAG captured (XCom of ``report_task_id``) in that MLflow run as
   ``drift/report.html``, so the evidence that started a retrain stays with the model it produced;
3. pushes the URLs of the MLflow run and of the report to XCom for the task's extra links
   "MLflow run" and "Drift report" (next to the provider's "KFP run").

The UI base of the links is ``$DRIFT_RETRAIN_MLFLOW_UI_URL`` (the URL people open, which may differ
from the tracking URI the workers use), else the tracking URI. Everything in steps 1-3 is
best effort: a problem is a warning in the task log, never a failed task (the model is trained and
registered by then; confirm_champion checks what matters).

Kept in driftloop (not in the provider): MLflow and the drift report are this project's business.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from airflow_kfp_provider.links.kfp import KfpRunLink
from airflow_kfp_provider.operators.kfp import KfpRunPipelineOperator
from driftloop.retrain.links import XCOM_DRIFT_REPORT_URL, XCOM_MLFLOW_RUN_URL, DriftReportLink, MlflowRunLink

if TYPE_CHECKING:
    from airflow.sdk import Context

MLFLOW_UI_ENV = "DRIFT_RETRAIN_MLFLOW_UI_URL"
REPORT_ARTIFACT = "drift/report.html"


def mlflow_ui_base(tracking_uri: str) -> str:
    """Where people open MLflow: ``$DRIFT_RETRAIN_MLFLOW_UI_URL``, else an http(s) tracking URI, else ""."""
    ui = os.environ.get(MLFLOW_UI_ENV) or tracking_uri or ""
    return ui.rstrip("/") if ui.startswith(("http://", "https://")) else ""


def mlflow_run_url(ui: str, experiment_id: str, run_id: str) -> str:
    return f"{ui}/#/experiments/{experiment_id}/runs/{run_id}"


def mlflow_artifact_url(ui: str, experiment_id: str, run_id: str, path: str = REPORT_ARTIFACT) -> str:
    return f"{mlflow_run_url(ui, experiment_id, run_id)}/artifactPath/{path}"


#: MLflow's client retries an unreachable server for minutes by default; bookkeeping gets a short try
#: (unless the deployment set these variables itself).
BOOKKEEPING_MLFLOW_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


@contextmanager
def _short_mlflow_retries() -> Iterator[None]:
    added = [k for k in BOOKKEEPING_MLFLOW_ENV if k not in os.environ]
    os.environ.update({k: BOOKKEEPING_MLFLOW_ENV[k] for k in added})
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


class RetrainPipelineOperator(KfpRunPipelineOperator):
    """:class:`KfpRunPipelineOperator` that stores the drift report with the candidate's MLflow run.

    :param report_task_id: the task whose XCom return value is the drift report HTML (None: no report).
    :param mlflow_tracking_uri: tracking URI (templated); default: the rendered ``mlflow_tracking_uri``
        pipeline argument, else ``$MLFLOW_TRACKING_URI``.
    """

    template_fields = (*KfpRunPipelineOperator.template_fields, "mlflow_tracking_uri")
    operator_extra_links = (KfpRunLink(), MlflowRunLink(), DriftReportLink())  # type: ignore[assignment]

    def __init__(
        self, *, report_task_id: str | None = "capture_drift_report", mlflow_tracking_uri: str = "", **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.report_task_id = report_task_id
        self.mlflow_tracking_uri = mlflow_tracking_uri

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        run = super().execute_complete(context, event)  # raises unless the run succeeded
        try:
            with _short_mlflow_retries():
                self.record_in_mlflow(context, run)
        except Exception as exc:  # never fail a successful retrain for its bookkeeping
            self.log.warning("Could not record the drift report / MLflow links: %s: %s", type(exc).__name__, exc)
        return run

    def _tracking_uri(self) -> str:
        from driftloop.retrain.settings import mlflow_tracking_uri

        return str(self.mlflow_tracking_uri or (self.pipeline_params or {}).get("mlflow_tracking_uri") or "") or (
            mlflow_tracking_uri()
        )

    def record_in_mlflow(self, context: Context, run: dict[str, Any]) -> dict[str, str]:
        """Steps 1-3 of the module docstring; returns the URLs pushed (for the log and tests)."""
        from driftloop.retrain.champion import resolve_outcome

        uri = self._tracking_uri()
        outcome = resolve_outcome(run or {}, uri)
        run_id = outcome.get("mlflow_run_id")
        if not run_id:
            self.log.warning("The pipeline's outcome names no MLflow run (%s): no MLflow links, no report.", outcome)
            return {}
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        experiment_id = client.get_run(str(run_id)).info.experiment_id
        ui = mlflow_ui_base(uri)
        ti = context["ti"]
        urls: dict[str, str] = {}
        if ui:
            urls[XCOM_MLFLOW_RUN_URL] = mlflow_run_url(ui, experiment_id, str(run_id))
            ti.xcom_push(key=XCOM_MLFLOW_RUN_URL, value=urls[XCOM_MLFLOW_RUN_URL])
        else:
            self.log.warning("No http(s) MLflow UI URL (set $%s): no MLflow links.", MLFLOW_UI_ENV)
        html = ti.xcom_pull(task_ids=self.report_task_id) if self.report_task_id else None
        if isinstance(html, str) and html.strip():
            client.log_text(str(run_id), html, REPORT_ARTIFACT)
            self.log.info("Drift report stored with MLflow run %s as %s", run_id, REPORT_ARTIFACT)
            if ui:
                urls[XCOM_DRIFT_REPORT_URL] = mlflow_artifact_url(ui, experiment_id, str(run_id))
                ti.xcom_push(key=XCOM_DRIFT_REPORT_URL, value=urls[XCOM_DRIFT_REPORT_URL])
        else:
            self.log.info("No drift report captured for this run (forced, or the report was unavailable).")
        for key, url in urls.items():
            self.log.info("%s: %s", key, url)
        return urls
