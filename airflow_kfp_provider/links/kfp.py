"""Operator extra link: the button "KFP run" on the task opens the run in the KFP UI.

The operator stores the run's URL in XCom (``kfp_run_url``) as soon as the run is known; Airflow asks
:meth:`KfpRunLink.get_link` when the task ends and keeps the link for the UI. On the ``local`` backend the
URL is the run's log file (``file://``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator, Context
    from airflow.sdk.types import TaskInstanceKey

XCOM_RUN_URL = "kfp_run_url"


class KfpRunLink(BaseOperatorLink):
    """Link to the pipeline run of a :class:`~airflow_kfp_provider.operators.kfp.KfpRunPipelineOperator`."""

    name = "KFP run"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        from airflow.sdk.execution_time.xcom import XCom

        url: Any = XCom.get_value(ti_key=ti_key, key=XCOM_RUN_URL)
        return str(url) if url else ""

    @staticmethod
    def persist(context: Context, url: str | None) -> None:
        """Remember the run's URL for the link (called by the operator once the run is known)."""
        if url:
            context["ti"].xcom_push(key=XCOM_RUN_URL, value=url)
