"""KfpHook: submit, watch, find and cancel Kubeflow Pipelines runs on one of two backends.

The backend is chosen by the Airflow connection (default id ``kfp_default``), field ``extra.backend``:

``local``
    Runs the compiled pipeline YAML with ``python -m kfp_components.run_local`` (which uses
    ``kfp.local.SubprocessRunner``) in a process detached from Airflow, and keeps a run record on disk
    (:mod:`airflow_kfp_provider.local_runs`) that survives restarts of every Airflow component.
``kfp``
    Talks to a Kubeflow Pipelines API server (v2beta1) through ``kfp.Client``: host, namespace,
    bearer token or a service-account token file, experiment, ``enable_caching=False``.

Both backends offer the same calls (``submit_run``, ``get_run``, ``find_run_by_name``,
``cancel_run``) and report the same states (:mod:`airflow_kfp_provider.states`). Nothing heavy is
imported at module level: ``kfp`` is imported on the first call of the ``kfp`` backend.

Connection examples (environment variables)::

    AIRFLOW_CONN_KFP_DEFAULT='{"conn_type": "kfp", "extra": {"backend": "local"}}'
    AIRFLOW_CONN_KFP_DEFAULT='{"conn_type": "kfp", "host": "http://ml-pipeline.kubeflow:8888",
        "password": "<bearer token>", "extra": {"backend": "kfp", "namespace": "mlops",
        "experiment": "drift-retrain"}}'
"""
from __future__ import annotations

import contextlib
import json
import os
import shlex
import socket
import sys
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Iterator

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowNotFoundException

from airflow_kfp_provider.pipeline_spec import cli_value
from airflow_kfp_provider.states import RunState, normalize_state

BACKENDS = ("local", "kfp")
DEFAULT_EXPERIMENT = "drift-retrain"
DEFAULT_RUNNER_MODULE = "kfp_components.run_local"
RUNS_DIR_ENV = "KFP_LOCAL_RUNS_DIR"


class KfpHookError(AirflowException):
    """A KFP call failed."""


class KfpConfigError(AirflowFailException):
    """The configuration is wrong (connection, backend, pipeline package): retrying cannot help."""


class KfpTransientError(KfpHookError):
    """The backend could not be reached or answered 5xx/429: worth trying again."""


class KfpRunNotFound(KfpHookError):
    """No run with that id."""


class KfpApiError(KfpHookError):
    """The KFP API refused the request (4xx other than 404 and 429)."""


@dataclass
class PipelineRun:
    """A backend-neutral view of one pipeline run. ``to_dict()`` is plain JSON (XCom, trigger events)."""

    run_id: str
    display_name: str
    state: str
    backend: str
    created_at: str | None = None
    finished_at: str | None = None
    error: str | None = None
    outputs: dict = field(default_factory=dict)
    url: str | None = None
    raw_state: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "PipelineRun":
        return cls(**{k: data.get(k) for k in cls.__dataclass_fields__ if k in data})


def _as_bool(value: Any, default: bool) -> bool:
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in {"1", "true", "yes", "on"}


@dataclass
class KfpConnectionConfig:
    """Settings read from the Airflow connection. See docs/airflow.md for every field."""

    conn_id: str
    backend: str
    # kfp backend
    host: str | None = None
    namespace: str | None = None
    experiment: str = DEFAULT_EXPERIMENT
    token: str | None = None
    sa_token_path: str | None = None
    verify_ssl: bool | None = None
    ssl_ca_cert: str | None = None
    ui_host: str | None = None
    pipeline_root: str | None = None
    service_account: str | None = None
    enable_caching: bool = False
    # local backend
    runs_dir: str = ""
    runner: list[str] = field(default_factory=list)
    python: str = sys.executable

    @classmethod
    def from_connection(cls, conn: Any) -> "KfpConnectionConfig":
        extra = dict(conn.extra_dejson or {})
        backend = str(extra.get("backend") or "local").strip().lower()
        if backend not in BACKENDS:
            raise KfpConfigError(
                f"connection {conn.conn_id!r} asks for unknown KFP backend {backend!r}: set its extra "
                f'"backend" to one of {", ".join(BACKENDS)} (local = kfp.local SubprocessRunner on this '
                "machine, kfp = a Kubeflow Pipelines API server at the connection's host)"
            )
        python = str(extra.get("python") or sys.executable)
        runner = extra.get("runner") or [python, "-m", DEFAULT_RUNNER_MODULE]
        if isinstance(runner, str):
            runner = shlex.split(runner)
        runs_dir = (
            extra.get("runs_dir")
            or os.environ.get(RUNS_DIR_ENV)
            or str(Path(os.environ.get("AIRFLOW_HOME") or Path.home() / "airflow") / "kfp_local_runs")
        )
        auth = str(extra.get("auth") or "").lower()
        sa_path = extra.get("sa_token_path")
        if auth == "service_account" and not sa_path:
            sa_path = ""  # kfp's default: $KF_PIPELINES_SA_TOKEN_PATH or the projected token volume
        return cls(
            conn_id=conn.conn_id,
            backend=backend,
            host=cls._host(conn, extra),
            namespace=extra.get("namespace") or None,
            experiment=str(extra.get("experiment") or DEFAULT_EXPERIMENT),
            token=conn.password or extra.get("token") or None,
            sa_token_path=sa_path,
            verify_ssl=None if extra.get("verify_ssl") is None else _as_bool(extra.get("verify_ssl"), True),
            ssl_ca_cert=extra.get("ssl_ca_cert") or None,
            ui_host=extra.get("ui_host") or None,
            pipeline_root=extra.get("pipeline_root") or None,
            service_account=extra.get("service_account") or None,
            enable_caching=_as_bool(extra.get("enable_caching"), False),
            runs_dir=str(runs_dir),
            runner=[str(part) for part in runner],
            python=python,
        )

    @staticmethod
    def _host(conn: Any, extra: dict) -> str | None:
        host = extra.get("host") or conn.host
        if not host:
            return None
        host = str(host).rstrip("/")
        if "://" not in host:
            scheme = conn.schema if conn.schema in ("http", "https") else extra.get("scheme", "http")
            host = f"{scheme}://{host}"
        if conn.port:
            scheme, rest = host.split("://", 1)
            netloc, sep, path = rest.partition("/")
            if ":" not in netloc:
                host = f"{scheme}://{netloc}:{conn.port}{sep}{path}"
        return host

    def describe(self) -> str:
        if self.backend == "local":
            return f"local backend (runs in {self.runs_dir}, runner: {' '.join(self.runner)})"
        auth = "token" if self.token else ("service-account token" if self.sa_token_path is not None else "no auth")
        return (f"KFP API {self.host} (namespace {self.namespace or '-'}, experiment {self.experiment!r}, "
                f"{auth}, caching {'on' if self.enable_caching else 'off'})")


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
                    f"Airflow connection {self.kfp_conn_id!r} is not defined. For the embedded stack set "
                    f"AIRFLOW_CONN_{self.kfp_conn_id.upper()}='{{\"conn_type\": \"kfp\", \"extra\": "
                    f"{{\"backend\": \"local\"}}}}' (see docs/airflow.md for the kfp backend)"
                ) from None
        return self._connection

    @cached_property
    def config(self) -> KfpConnectionConfig:
        return KfpConnectionConfig.from_connection(self._get_connection())

    @cached_property
    def backend(self) -> "LocalBackend | KfpApiBackend":
        cfg = self.config
        if cfg.backend == "local":
            return LocalBackend(cfg)
        if not cfg.host:
            raise KfpConfigError(
                f"connection {cfg.conn_id!r} selects the kfp backend but has no host: set its host to the "
                "KFP API, e.g. http://ml-pipeline.kubeflow:8888 (in cluster) or http://127.0.0.1:8080 "
                "(kubectl port-forward)"
            )
        return KfpApiBackend(cfg)

    def get_conn(self) -> "LocalBackend | KfpApiBackend":
        return self.backend

    # -- the calls -------------------------------------------------------------------------
    def preflight(self, pipeline_package: str | None = None) -> None:
        """Check configuration and reachability before anything is submitted (raises with the fix)."""
        self.backend.preflight(pipeline_package)

    def submit_run(self, run_name: str, pipeline_package: str, params: dict | None = None) -> PipelineRun:
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


# ---------------------------------------------------------------------------------------------
class LocalBackend:
    """Runs pipelines on this machine through ``kfp_components.run_local`` and records them on disk."""

    name = "local"

    def __init__(self, cfg: KfpConnectionConfig):
        self.cfg = cfg
        from airflow_kfp_provider.local_runs import LocalRunStore

        self.store = LocalRunStore(cfg.runs_dir)

    def preflight(self, pipeline_package: str | None) -> None:
        runner = self.cfg.runner
        exe = runner[0] if runner else ""
        if not runner or not (os.path.isabs(exe) and os.access(exe, os.X_OK) or _which(exe)):
            raise KfpConfigError(
                f"local runner {exe!r} (connection {self.cfg.conn_id!r}, extra runner/python) is not an "
                "executable: point extra.python at the project's virtualenv python"
            )
        if "-m" in runner[:-1]:
            module = runner[runner.index("-m") + 1]
            if Path(exe).resolve() == Path(sys.executable).resolve() and not _module_exists(module):
                raise KfpConfigError(
                    f"the local runner module {module} is not importable here: install the project "
                    "(`make install`, which installs kfp_components) or set extra.runner in connection "
                    f"{self.cfg.conn_id!r}"
                )
        try:
            Path(self.cfg.runs_dir).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise KfpConfigError(
                f"cannot create the local runs directory {self.cfg.runs_dir}: {exc}; set extra.runs_dir "
                f"or ${RUNS_DIR_ENV} to a writable directory"
            ) from exc

    def submit(self, run_name: str, pipeline_package: str, params: dict) -> PipelineRun:
        from airflow_kfp_provider.local_runs import RunNameTaken

        command = [*self.cfg.runner, "--yaml", str(Path(pipeline_package).resolve())]
        for key, value in params.items():
            command += ["--param", f"{key}={cli_value(value)}"]
        try:
            record = self.store.create_run(run_name, command, pipeline_package=str(pipeline_package),
                                           params=params)
        except RunNameTaken as taken:  # lost a race with another submitter of the same name: adopt
            return self.get_run(taken.run_id)
        # run_local writes its artifacts under $KFP_LOCAL_PIPELINE_ROOT (default: inside the run directory)
        env = {"KFP_LOCAL_PIPELINE_ROOT": self.cfg.pipeline_root} if self.cfg.pipeline_root else None
        record = self.store.start(record["run_id"], env=env, python=self.cfg.python)
        return self._to_run(record)

    def get_run(self, run_id: str) -> PipelineRun:
        from airflow_kfp_provider.local_runs import RunNotFound

        try:
            return self._to_run(self.store.get(run_id))
        except RunNotFound as exc:
            raise KfpRunNotFound(f"{exc} (connection {self.cfg.conn_id!r}, extra runs_dir)") from exc

    def find_run_by_name(self, run_name: str) -> PipelineRun | None:
        record = self.store.find_by_name(run_name)
        return self._to_run(record) if record else None

    def cancel(self, run_id: str) -> None:
        from airflow_kfp_provider.local_runs import RunNotFound

        try:
            self.store.request_cancel(run_id)
        except RunNotFound as exc:
            raise KfpRunNotFound(str(exc)) from exc

    def _to_run(self, record: dict) -> PipelineRun:
        return PipelineRun(
            run_id=record["run_id"],
            display_name=record.get("display_name", ""),
            state=normalize_state(record.get("state")),
            raw_state=record.get("state"),
            backend=self.name,
            created_at=record.get("created_at"),
            finished_at=record.get("finished_at"),
            error=record.get("error"),
            outputs=dict(record.get("outputs") or {}),
            url=f"file://{record.get('log_path')}" if record.get("log_path") else None,
        )


def _which(exe: str) -> bool:
    import shutil

    return bool(exe) and shutil.which(exe) is not None


def _module_exists(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


# ---------------------------------------------------------------------------------------------
class KfpApiBackend:
    """A Kubeflow Pipelines API server (v2beta1) through ``kfp.Client``."""

    name = "kfp"

    def __init__(self, cfg: KfpConnectionConfig):
        self.cfg = cfg
        self._client: Any = None
        self._experiment_id: str | None = None

    # -- errors ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _api(self, action: str) -> Iterator[None]:
        """Turn kfp/urllib3 errors into KfpTransientError / KfpRunNotFound / KfpApiError with the fix."""
        try:
            yield
        except KfpHookError:
            raise
        except AirflowException:
            raise
        except Exception as exc:
            raise self._translate(action, exc) from exc

    def _translate(self, action: str, exc: Exception) -> Exception:
        status = getattr(exc, "status", None)
        where = f"KFP API {self.cfg.host}"
        if status is not None and type(exc).__name__ == "ApiException":
            body = _error_message(getattr(exc, "body", None)) or getattr(exc, "reason", "")
            if status == 0 or status >= 500 or status == 429:
                return KfpTransientError(f"{action}: {where} answered {status or 'no response'}: {body}")
            if status == 404:
                return KfpRunNotFound(f"{action}: not found at {where}: {body}")
            if status in (401, 403):
                return KfpApiError(
                    f"{action}: {where} refused the credentials ({status}: {body}); set a valid bearer token "
                    f"as the password of connection {self.cfg.conn_id!r}, or extra auth=service_account "
                    "with a token volume"
                )
            return KfpApiError(f"{action}: {where} rejected the request ({status}: {body})")
        if isinstance(exc, (OSError, socket.timeout, TimeoutError)) or type(exc).__module__.startswith("urllib3"):
            return KfpTransientError(
                f"{action}: {where} is unreachable ({type(exc).__name__}: {exc}). Check the host of connection "
                f"{self.cfg.conn_id!r} (in cluster: http://ml-pipeline.kubeflow:8888; from a laptop: "
                "kubectl -n kubeflow port-forward svc/ml-pipeline 8888:8888) and that the KFP API is up"
            )
        return KfpHookError(f"{action}: {type(exc).__name__}: {exc}")

    # -- client ----------------------------------------------------------------------------
    @property
    def client(self) -> Any:
        if self._client is None:
            import warnings

            try:
                import kfp
                from kfp.client.set_volume_credentials import ServiceAccountTokenVolumeCredentials
            except ImportError as exc:  # pragma: no cover - kfp is a pinned dependency
                raise KfpConfigError(f"the kfp package is not installed ({exc}): `make install`") from exc
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
            class _Client(kfp.Client):
                # kfp.Client() asks /healthz in its constructor and, on an API error (a wrong token
                # answers 401), retries 5 times with 5 s sleeps. Ask once; errors are ours to handle.
                def get_kfp_healthz(self, sleep_duration: int = 5) -> Any:
                    return self._healthz_api.healthz_service_get_healthz()

            with self._api("connect"), warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                self._client = _Client(**kwargs)
        return self._client

    def preflight(self, pipeline_package: str | None) -> None:
        with self._api("check the KFP API"):
            self.client._healthz_api.healthz_service_get_healthz()

    def _experiment(self, create: bool) -> str | None:
        if self._experiment_id:
            return self._experiment_id
        name, namespace = self.cfg.experiment, self.cfg.namespace
        with self._api(f"look up experiment {name!r}"):
            try:
                exp = self.client.get_experiment(experiment_name=name, namespace=namespace)
            except ValueError as exc:
                if not str(exc).startswith("No experiment is found"):
                    raise KfpApiError(f"experiment {name!r}: {exc}") from exc
                if not create:
                    return None
                exp = self.client.create_experiment(name=name, namespace=namespace)
        self._experiment_id = exp.experiment_id
        return self._experiment_id

    # -- the calls -------------------------------------------------------------------------
    def submit(self, run_name: str, pipeline_package: str, params: dict) -> PipelineRun:
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
            response = self.client.list_runs(experiment_id=experiment_id, filter=flt,
                                             sort_by="created_at desc", page_size=20)
        runs = [r for r in (response.runs or []) if r.display_name == run_name]
        if not runs:
            return None
        runs.sort(key=lambda r: str(r.created_at or ""), reverse=True)
        return self._to_run(runs[0])

    def cancel(self, run_id: str) -> None:
        with self._api(f"terminate run {run_id}"):
            self.client.terminate_run(run_id)

    def _to_run(self, run: Any) -> PipelineRun:
        ui = (self.cfg.ui_host or self.cfg.host or "").rstrip("/")
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
            url=f"{ui}/#/runs/details/{run.run_id}" if ui else None,
        )


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    if hasattr(value, "isoformat"):
        # KFP reports an unset finished_at as 1970-01-01T00:00:00Z.
        if getattr(value, "year", 2000) <= 1970:
            return None
        return value.isoformat()
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
        return err.message
    for status in reversed(getattr(run, "state_history", None) or []):
        if getattr(status, "error", None) is not None and status.error.message:
            return status.error.message
    details = getattr(run, "run_details", None)
    for task in (getattr(details, "task_details", None) or []) if details else []:
        if normalize_state(task.state) == RunState.FAILED:
            msg = getattr(getattr(task, "error", None), "message", None)
            return f"task {task.display_name} failed" + (f": {msg}" if msg else "")
    return None
