"""The ``kfp`` backend: a Kubeflow Pipelines API server (v2beta1) through the public ``kfp.Client`` API.

Host, namespace, bearer token or a service-account token file, experiment, ``enable_caching=False`` by
default. ``kfp`` is imported on the first call, never when a DAG file is parsed. Errors are typed where
they are caught: ``kfp_server_api.ApiException`` by HTTP status, connection errors (urllib3, OSError)
as transient.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator
from typing import Any

from airflow_kfp_provider.config import KfpConnectionConfig
from airflow_kfp_provider.exceptions import (
    KfpApiError,
    KfpAuthError,
    KfpConfigError,
    KfpHookError,
    KfpRunNotFound,
    KfpTransientError,
)
from airflow_kfp_provider.hooks.base import KfpBackend, PipelineRun
from airflow_kfp_provider.states import RunState, normalize_state


def _client_class() -> Any:
    try:
        import kfp
    except ImportError as exc:  # pragma: no cover - kfp is a dependency of the provider
        raise KfpConfigError(f"the kfp package is not installed ({exc}): install the provider's dependencies") from exc

    class _Client(kfp.Client):  # type: ignore[misc]
        """``kfp.Client`` whose health check asks once.

        The constructor of ``kfp.Client`` calls ``get_kfp_healthz()``, which on an API error (a wrong
        token answers 401) tries 5 times with 5 s sleeps and then raises a bare TimeoutError. Asking once,
        through the client's public generated API (``client.healthzs``), keeps the HTTP status, so the
        error can be typed (refused credentials, unreachable host) and retried where it is worth it.
        """

        def get_kfp_healthz(self, sleep_duration: int = 5) -> Any:
            return self.healthzs.healthz_service_get_healthz()

    return _Client


class KfpApiBackend(KfpBackend):
    """A Kubeflow Pipelines API server (v2beta1) through ``kfp.Client``."""

    name = "kfp"

    def __init__(self, cfg: KfpConnectionConfig) -> None:
        super().__init__(cfg)
        if not cfg.host:
            raise KfpConfigError(
                f"connection {cfg.conn_id!r} selects the kfp backend but has no host: set its host to the "
                "KFP API, e.g. http://ml-pipeline.kubeflow:8888 (in cluster) or http://127.0.0.1:8080 "
                "(kubectl port-forward)"
            )
        self._client: Any = None
        self._experiment_id: str | None = None

    # -- errors, typed where they are caught ---------------------------------------------------
    @contextlib.contextmanager
    def _api(self, action: str) -> Iterator[None]:
        import kfp_server_api
        import urllib3

        where = f"KFP API {self.cfg.host}"
        try:
            yield
        except KfpHookError:
            raise
        except kfp_server_api.ApiException as exc:
            status = int(exc.status or 0)
            body = _error_message(exc.body) or str(exc.reason or "")
            if status == 0 or status >= 500 or status == 429:
                raise KfpTransientError(f"{action}: {where} answered {status or 'no response'}: {body}") from exc
            if status == 404:
                raise KfpRunNotFound(f"{action}: not found at {where}: {body}") from exc
            if status in (401, 403):
                raise KfpAuthError(
                    f"{action}: {where} refused the credentials ({status}: {body}); set a valid bearer token "
                    f"as the password of connection {self.cfg.conn_id!r}, or extra auth=service_account "
                    "with a token volume"
                ) from exc
            raise KfpApiError(f"{action}: {where} rejected the request ({status}: {body})") from exc
        except FileNotFoundError as exc:  # the pipeline package (checked before, but it may have gone since)
            raise KfpConfigError(f"{action}: {exc}") from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:  # refused, DNS, timeout (TimeoutError is an OSError)
            raise KfpTransientError(
                f"{action}: {where} is unreachable ({type(exc).__name__}: {exc}). Check the host of connection "
                f"{self.cfg.conn_id!r} (in cluster: http://ml-pipeline.kubeflow:8888; from a laptop: "
                "kubectl -n kubeflow port-forward svc/ml-pipeline 8888:8888) and that the KFP API is up"
            ) from exc

    # -- client ----------------------------------------------------------------------------------
    @property
    def client(self) -> Any:
        if self._client is None:
            from kfp.client.set_volume_credentials import ServiceAccountTokenVolumeCredentials

            kwargs: dict[str, Any] = {"host": self.cfg.host}
            if self.cfg.namespace:
                kwargs["namespace"] = self.cfg.namespace
            if self.cfg.token:
                kwargs["existing_token"] = self.cfg.token
            elif self.cfg.sa_token_path is not None:
                kwargs["credentials"] = ServiceAccountTokenVolumeCredentials(path=self.cfg.sa_token_path or None)
            if self.cfg.verify_ssl is not None:
                kwargs["verify_ssl"] = self.cfg.verify_ssl
            if self.cfg.ssl_ca_cert:
                kwargs["ssl_ca_cert"] = self.cfg.ssl_ca_cert
            if self.cfg.ui_host:
                kwargs["ui_host"] = self.cfg.ui_host
            client_class = _client_class()
            with self._api("connect"), warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                self._client = client_class(**kwargs)
        return self._client

    def preflight(self, pipeline_package: str | None) -> None:
        with self._api("check the KFP API"):
            self.client.get_kfp_healthz()

    def _experiment(self, create: bool) -> str | None:
        if self._experiment_id:
            return self._experiment_id
        name, namespace = self.cfg.experiment, self.cfg.namespace
        flt = json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": name}]})
        with self._api(f"look up experiment {name!r}"):
            found = self.client.list_experiments(filter=flt, namespace=namespace, page_size=1).experiments or []
            if found:
                self._experiment_id = found[0].experiment_id
            elif create:
                self._experiment_id = self.client.create_experiment(name=name, namespace=namespace).experiment_id
        return self._experiment_id

    # -- the calls -----------------------------------------------------------------------------
    def submit(self, run_name: str, pipeline_package: str, params: dict[str, Any]) -> PipelineRun:
        experiment_id = self._experiment(create=True)
        with self._api(f"create run {run_name!r}"):
            result = self.client.create_run_from_pipeline_package(
                pipeline_file=str(pipeline_package),
                arguments=params,
                run_name=run_name,
                experiment_id=experiment_id,
                pipeline_root=self.cfg.pipeline_root,
                enable_caching=self.cfg.enable_caching,
                service_account=self.cfg.service_account,
            )
        return self.get_run(result.run_id)

    def get_run(self, run_id: str) -> PipelineRun:
        with self._api(f"get run {run_id}"):
            run = self.client.get_run(run_id)
        return self._to_run(run)

    def find_run_by_name(self, run_name: str) -> PipelineRun | None:
        experiment_id = self._experiment(create=False)
        if experiment_id is None:
            return None
        flt = json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": run_name}]})
        with self._api(f"list runs named {run_name!r}"):
            response = self.client.list_runs(
                experiment_id=experiment_id, filter=flt, sort_by="created_at desc", page_size=20
            )
        runs = [r for r in (response.runs or []) if r.display_name == run_name]
        if not runs:
            return None
        runs.sort(key=lambda r: str(r.created_at or ""), reverse=True)
        return self._to_run(runs[0])

    def cancel(self, run_id: str) -> None:
        with self._api(f"terminate run {run_id}"):
            self.client.terminate_run(run_id)

    def run_url(self, run_id: str) -> str | None:
        ui = (self.cfg.ui_host or self.cfg.host or "").rstrip("/")
        return f"{ui}/#/runs/details/{run_id}" if ui else None

    def _to_run(self, run: Any) -> PipelineRun:
        return PipelineRun(
            run_id=run.run_id,
            display_name=run.display_name or "",
            state=normalize_state(run.state),
            raw_state=None if run.state is None else str(run.state),
            backend=self.name,
            created_at=_iso(run.created_at),
            finished_at=_iso(getattr(run, "finished_at", None)),
            error=_run_error(run),
            outputs={},
            url=self.run_url(run.run_id),
        )


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    if hasattr(value, "isoformat"):
        # KFP reports an unset finished_at as 1970-01-01T00:00:00Z.
        if getattr(value, "year", 2000) <= 1970:
            return None
        return str(value.isoformat())
    return str(value)


def _error_message(body: Any) -> str:
    if not body:
        return ""
    if isinstance(body, bytes):
        body = body.decode("utf-8", errors="replace")
    try:
        data = json.loads(body)
    except (TypeError, ValueError):
        return str(body)[:500]
    if isinstance(data, dict):
        return str(data.get("message") or data.get("error") or data)[:500]
    return str(data)[:500]


def _run_error(run: Any) -> str | None:
    """The most useful error text of a run: its own error, the last state's, or the first failed task's."""
    err = getattr(run, "error", None)
    if err is not None and getattr(err, "message", None):
        return str(err.message)
    for status in reversed(getattr(run, "state_history", None) or []):
        if getattr(status, "error", None) is not None and status.error.message:
            return str(status.error.message)
    details = getattr(run, "run_details", None)
    for task in (getattr(details, "task_details", None) or []) if details else []:
        if normalize_state(task.state) == RunState.FAILED:
            msg = getattr(getattr(task, "error", None), "message", None)
            return f"task {task.display_name} failed" + (f": {msg}" if msg else "")
    return None
