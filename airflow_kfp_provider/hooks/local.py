"""The ``local`` backend: runs a compiled pipeline on this machine with KFP's local runner.

The runner command (connection ``extra.runner``, default ``python -m airflow_kfp_provider.local_runner``)
gets ``--yaml PATH --param name=value ...``; it runs detached from Airflow and is recorded on disk by
:mod:`airflow_kfp_provider.local_runs`, so the run survives restarts of every Airflow component. A
runner may write a JSON object to the file named by ``$KFP_RUN_OUTCOME_FILE``: it becomes the run's
``outputs["outcome"]``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from airflow_kfp_provider.config import RUNS_DIR_ENV, KfpConnectionConfig
from airflow_kfp_provider.exceptions import KfpConfigError, KfpRunNotFound
from airflow_kfp_provider.hooks.base import KfpBackend, PipelineRun
from airflow_kfp_provider.local_runs import LocalRunStore, RunNameTaken, RunNotFound
from airflow_kfp_provider.pipeline_spec import cli_value
from airflow_kfp_provider.states import normalize_state


class LocalBackend(KfpBackend):
    """Runs pipelines on this machine through a runner command and records them on disk."""

    name = "local"

    def __init__(self, cfg: KfpConnectionConfig) -> None:
        super().__init__(cfg)
        self.store = LocalRunStore(cfg.runs_dir)

    def preflight(self, pipeline_package: str | None) -> None:
        runner = self.cfg.runner
        exe = runner[0] if runner else ""
        if not runner or not ((os.path.isabs(exe) and os.access(exe, os.X_OK)) or shutil.which(exe)):
            raise KfpConfigError(
                f"local runner {exe!r} (connection {self.cfg.conn_id!r}, extra runner/python) is not an "
                "executable: point extra.python at the project's virtualenv python"
            )
        if "-m" in runner[:-1]:
            module = runner[runner.index("-m") + 1]
            if Path(exe).resolve() == Path(sys.executable).resolve() and not _module_exists(module):
                raise KfpConfigError(
                    f"the local runner module {module} is not importable here: install the package that "
                    f"provides it or set extra.runner in connection {self.cfg.conn_id!r}"
                )
        try:
            Path(self.cfg.runs_dir).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise KfpConfigError(
                f"cannot create the local runs directory {self.cfg.runs_dir}: {exc}; set extra.runs_dir "
                f"or ${RUNS_DIR_ENV} to a writable directory"
            ) from exc

    def submit(self, run_name: str, pipeline_package: str, params: dict[str, Any]) -> PipelineRun:
        command = [*self.cfg.runner, "--yaml", str(Path(pipeline_package).resolve())]
        for key, value in params.items():
            command += ["--param", f"{key}={cli_value(value)}"]
        try:
            record = self.store.create_run(run_name, command, pipeline_package=str(pipeline_package), params=params)
        except RunNameTaken as taken:  # lost a race with another submitter of the same name: adopt
            return self.get_run(taken.run_id)
        # the runner writes its artifacts under $KFP_LOCAL_PIPELINE_ROOT (default: inside the run directory)
        env = {"KFP_LOCAL_PIPELINE_ROOT": self.cfg.pipeline_root} if self.cfg.pipeline_root else None
        record = self.store.start(record["run_id"], env=env, python=self.cfg.python)
        return self._to_run(record)

    def get_run(self, run_id: str) -> PipelineRun:
        try:
            return self._to_run(self.store.get(run_id))
        except RunNotFound as exc:
            raise KfpRunNotFound(f"{exc} (connection {self.cfg.conn_id!r}, extra runs_dir)") from exc

    def find_run_by_name(self, run_name: str) -> PipelineRun | None:
        record = self.store.find_by_name(run_name)
        return self._to_run(record) if record else None

    def cancel(self, run_id: str) -> None:
        try:
            self.store.request_cancel(run_id)
        except RunNotFound as exc:
            raise KfpRunNotFound(str(exc)) from exc

    def _to_run(self, record: dict[str, Any]) -> PipelineRun:
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


def _module_exists(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False
