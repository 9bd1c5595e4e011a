"""KfpRunSensor: wait for a pipeline run that was submitted elsewhere (another task, another system).

Pokes :meth:`KfpHook.get_run`; succeeds when the run succeeded (or was skipped), fails the task when it
failed or was canceled, keeps poking while it runs. A transient API error is one unsuccessful poke.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue
from airflow.sdk.exceptions import AirflowException

from airflow_kfp_provider.exceptions import KfpTransientError
from airflow_kfp_provider.links.kfp import KfpRunLink
from airflow_kfp_provider.states import run_event

if TYPE_CHECKING:
    from airflow.sdk import Context


class KfpRunSensor(BaseSensorOperator):
    """Wait until a KFP run is final; its ``PipelineRun.to_dict()`` is the XCom value on success.

    :param run_id: the KFP run to watch (templated, e.g. ``{{ ti.xcom_pull(task_ids='submit', key='run_id') }}``).
    :param kfp_conn_id: connection selecting the backend.
    """

    template_fields: Sequence[str] = ("run_id", "kfp_conn_id")
    operator_extra_links = (KfpRunLink(),)

    def __init__(self, *, run_id: str, kfp_conn_id: str = "kfp_default", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.run_id = run_id
        self.kfp_conn_id = kfp_conn_id

    def poke(self, context: Context) -> bool | PokeReturnValue:
        from airflow_kfp_provider.hooks.kfp import KfpHook

        try:
            run = KfpHook(kfp_conn_id=self.kfp_conn_id).get_run(self.run_id)
        except KfpTransientError as exc:
            self.log.warning("Could not read KFP run %s: %s", self.run_id, exc)
            return False
        KfpRunLink.persist(context, run.url)
        event = run_event(run)
        if event is None:
            self.log.info("KFP run %s (%s) is %s", run.run_id, run.display_name, run.state)
            return False
        if event["status"] != "success":
            raise AirflowException(event["message"])
        self.log.info("%s", event["message"])
        return PokeReturnValue(is_done=True, xcom_value=event["run"])
