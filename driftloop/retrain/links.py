"""Operator extra links of the retrain submit task: the candidate's MLflow run and its drift report.

``RetrainPipelineOperator`` pushes the two URLs to XCom once the pipeline ended (keys below); Airflow
asks ``get_link`` when the task ends and shows the buttons "MLflow run" and "Drift report" next to the
provider's "KFP run". The classes are registered with Airflow by ``driftloop.retrain.plugin``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey

XCOM_MLFLOW_RUN_URL = "mlflow_run_url"
XCOM_DRIFT_REPORT_URL = "drift_report_url"


def _xcom_link(ti_key: TaskInstanceKey, key: str) -> str:
    from airflow.sdk.execution_time.xcom import XCom

    url: Any = XCom.get_value(ti_key=ti_key, key=key)
    return str(url) if url else ""


class MlflowRunLink(BaseOperatorLink):
    """The MLflow run of the candidate the pipeline trained."""

    name = "MLflow run"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        return _xcom_link(ti_key, XCOM_MLFLOW_RUN_URL)


class DriftReportLink(BaseOperatorLink):
    """The drift report (``drift/report.html``) stored with that MLflow run."""

    name = "Drift report"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        return _xcom_link(ti_key, XCOM_DRIFT_REPORT_URL)
