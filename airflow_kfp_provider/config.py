"""The settings of a KFP connection, parsed once from the Airflow connection (no calls, no imports of kfp).

The backend is chosen by the connection's ``extra.backend``: ``local`` (the kfp.local runner on this
machine, :mod:`airflow_kfp_provider.hooks.local`) or ``kfp`` (a Kubeflow Pipelines API server,
:mod:`airflow_kfp_provider.hooks.kfp_api`). Connection examples (environment variables)::

    AIRFLOW_CONN_KFP_DEFAULT='{"conn_type": "kfp", "extra": {"backend": "local"}}'
    AIRFLOW_CONN_KFP_DEFAULT='{"conn_type": "kfp", "host": "http://ml-pipeline.kubeflow:8888",
        "password": "<bearer token>", "extra": {"backend": "kfp", "namespace": "mlops",
        "experiment": "drift-retrain"}}'
"""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airflow_kfp_provider.exceptions import KfpConfigError
from airflow_kfp_provider.utils import parse_bool

BACKENDS = ("local", "kfp")
#: KFP's own default experiment; set extra.experiment to group runs under another one.
DEFAULT_EXPERIMENT = "Default"
#: The local backend's default runner: ``python -m airflow_kfp_provider.local_runner --yaml ... --param ...``.
DEFAULT_RUNNER_MODULE = "airflow_kfp_provider.local_runner"
RUNS_DIR_ENV = "KFP_LOCAL_RUNS_DIR"


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
    def from_connection(cls, conn: Any) -> KfpConnectionConfig:
        extra: dict[str, Any] = dict(conn.extra_dejson or {})
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
        try:
            verify_ssl = (
                None if extra.get("verify_ssl") is None else parse_bool(extra["verify_ssl"], "verify_ssl", True)
            )
            enable_caching = parse_bool(extra.get("enable_caching"), "enable_caching", False)
        except ValueError as exc:
            raise KfpConfigError(f"connection {conn.conn_id!r}, extra {exc}") from None
        return cls(
            conn_id=conn.conn_id,
            backend=backend,
            host=cls._host(conn, extra),
            namespace=extra.get("namespace") or None,
            experiment=str(extra.get("experiment") or DEFAULT_EXPERIMENT),
            token=conn.password or extra.get("token") or None,
            sa_token_path=sa_path,
            verify_ssl=verify_ssl,
            ssl_ca_cert=extra.get("ssl_ca_cert") or None,
            ui_host=extra.get("ui_host") or None,
            pipeline_root=extra.get("pipeline_root") or None,
            service_account=extra.get("service_account") or None,
            enable_caching=enable_caching,
            runs_dir=str(runs_dir),
            runner=[str(part) for part in runner],
            python=python,
        )

    @staticmethod
    def _host(conn: Any, extra: dict[str, Any]) -> str | None:
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
        return (
            f"KFP API {self.host} (namespace {self.namespace or '-'}, experiment {self.experiment!r}, "
            f"{auth}, caching {'on' if self.enable_caching else 'off'})"
        )
