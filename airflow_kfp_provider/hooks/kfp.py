"""KfpHook: submit, watch, find and cancel Kubeflow Pipelines runs on the backend its connection names.

The connection (default id ``kfp_default``, type ``kfp``) is parsed by
:class:`~airflow_kfp_provider.config.KfpConnectionConfig`; ``extra.backend`` selects the implementation
of :class:`~airflow_kfp_provider.hooks.base.KfpBackend`:

``local``
    :class:`~airflow_kfp_provider.hooks.local.LocalBackend`, KFP's local runner on this machine.
``kfp``
    :class:`~airflow_kfp_provider.hooks.kfp_api.KfpApiBackend`, a Kubeflow Pipelines API server.

Both offer the same calls and report the same states (:mod:`airflow_kfp_provider.states`). Nothing heavy
is imported here: the backend modules are imported when the hook is first used.
"""

from __future__ import annotations

import json
from functools import cached_property
from typing import Any

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowNotFoundException

from airflow_kfp_provider.config import DEFAULT_EXPERIMENT, KfpConnectionConfig
from airflow_kfp_provider.exceptions import KfpConfigError
from airflow_kfp_provider.hooks.base import KfpBackend, PipelineRun


class KfpHook(BaseHook):
    """Submit and watch pipeline runs through the backend named in an Airflow connection.

    :param kfp_conn_id: the connection that selects and configures the backend.
    :param connection: an already fetched connection (triggers fetch it asynchronously).
    """

    conn_name_attr = "kfp_conn_id"
    default_conn_name = "kfp_default"
    conn_type = "kfp"
    hook_name = "Kubeflow Pipelines"

    def __init__(self, kfp_conn_id: str = default_conn_name, connection: Any | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.kfp_conn_id = kfp_conn_id
        self._connection = connection

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {
            "hidden_fields": ["login"],
            "relabeling": {"host": "KFP API host (kfp backend)", "password": "Bearer token (kfp backend)"},
            "placeholders": {
                "host": "http://ml-pipeline.kubeflow:8888",
                "extra": json.dumps({"backend": "kfp", "namespace": "mlops", "experiment": DEFAULT_EXPERIMENT}),
            },
        }

    # -- configuration ---------------------------------------------------------------------
    def _get_connection(self) -> Any:
        if self._connection is None:
            try:
                self._connection = self.get_connection(self.kfp_conn_id)
            except AirflowNotFoundException:
                raise KfpConfigError(
                    f"Airflow connection {self.kfp_conn_id!r} is not defined. For a local runner set "
                    f'AIRFLOW_CONN_{self.kfp_conn_id.upper()}=\'{{"conn_type": "kfp", "extra": '
                    f'{{"backend": "local"}}}}\' (see docs/airflow.md for the kfp backend)'
                ) from None
        return self._connection

    @cached_property
    def config(self) -> KfpConnectionConfig:
        return KfpConnectionConfig.from_connection(self._get_connection())

    @cached_property
    def backend(self) -> KfpBackend:
        if self.config.backend == "local":
            from airflow_kfp_provider.hooks.local import LocalBackend

            return LocalBackend(self.config)
        from airflow_kfp_provider.hooks.kfp_api import KfpApiBackend

        return KfpApiBackend(self.config)

    def get_conn(self) -> KfpBackend:
        return self.backend

    # -- the calls -------------------------------------------------------------------------
    def preflight(self, pipeline_package: str | None = None) -> None:
        """Check configuration and reachability before anything is submitted (raises with the fix)."""
        self.backend.preflight(pipeline_package)

    def submit_run(self, run_name: str, pipeline_package: str, params: dict[str, Any] | None = None) -> PipelineRun:
        self.log.info("Submitting %s as run %r on the %s", pipeline_package, run_name, self.config.describe())
        run = self.backend.submit(run_name, pipeline_package, dict(params or {}))
        self.log.info("Submitted run %s (%s), state %s", run.run_id, run.display_name, run.state)
        return run

    def get_run(self, run_id: str) -> PipelineRun:
        return self.backend.get_run(run_id)

    def find_run_by_name(self, run_name: str) -> PipelineRun | None:
        return self.backend.find_run_by_name(run_name)

    def cancel_run(self, run_id: str) -> None:
        self.log.info("Canceling run %s on the %s", run_id, self.config.describe())
        self.backend.cancel(run_id)

    def test_connection(self) -> tuple[bool, str]:
        try:
            self.preflight(None)
        except Exception as exc:  # the UI's "Test" button shows the message
            return False, str(exc)
        return True, f"OK: {self.config.describe()}"
