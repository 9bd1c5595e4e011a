"""KfpRunPipelineOperator: submit a compiled KFP pipeline once per DAG run and wait for it, deferred.

What ``execute`` does, in order:

1. checks the input before touching the backend: the compiled pipeline YAML exists, the arguments fit
   the pipeline's declared parameters (names and types), the connection names a known backend and the
   backend is reachable. Any problem fails the task with the fix in the message; nothing is submitted;
2. computes the run name from the DAG run (``<dag_id>-<task_id>-<run_id>`` sanitized, plus a short
   hash), so every try of the task instance computes the same name;
3. looks for a run with that name and adopts it if it exists (a retried or restarted task never
   submits a second run); only if the newest run of that name *failed or was canceled* and
   ``rerun_failed`` is set does it submit a new attempt named ``<name>-a2``, ``-a3``, ...;
4. pushes ``run_id`` and ``run_name`` to XCom, and the run's URL for the "KFP run" extra link;
5. returns at once when the run is already final, else defers to :class:`KfpRunTrigger` (no worker
   slot held while waiting) with a deadline of ``timeout``; with ``deferrable=False`` it runs the same
   wait loop (:func:`airflow_kfp_provider.wait.wait_for_run`) in the worker;
6. ``execute_complete`` returns the run (state, outputs, ...) on success and raises with the run's
   error on FAILED/CANCELED, on timeout (after canceling the run) and when the wait gave up.

``on_kill`` cancels the run when the task is killed while it is running on a worker; when the task
is deferred, the trigger's ``on_kill`` does it.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator, conf
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from airflow_kfp_provider.links.kfp import KfpRunLink
from airflow_kfp_provider.states import DEFAULT_MAX_TRANSIENT_ERRORS, DEFAULT_POLL_INTERVAL, run_event

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_kfp_provider.hooks.base import PipelineRun
    from airflow_kfp_provider.hooks.kfp import KfpHook

MAX_RUN_NAME = 100
MAX_ATTEMPTS = 20


def sanitize_name(text: str) -> str:
    return re.sub(r"-{2,}", "-", re.sub(r"[^a-z0-9]+", "-", text.lower())).strip("-")


def build_run_name(dag_id: str, task_id: str, dag_run_id: str, map_index: int = -1) -> str:
    """Deterministic, readable, unique per (dag, task, Airflow DAG run, map index); at most ~110 characters."""
    raw = f"{dag_id}|{task_id}|{dag_run_id}|{map_index}"
    digest = hashlib.sha1(raw.encode("utf-8")).hexdigest()[:8]
    parts = [dag_id, task_id, dag_run_id] + ([str(map_index)] if map_index is not None and map_index >= 0 else [])
    base = sanitize_name("-".join(parts))[:MAX_RUN_NAME].rstrip("-")
    return f"{base}-{digest}"


def attempt_name(run_name: str, attempt: int) -> str:
    return run_name if attempt <= 1 else f"{run_name}-a{attempt}"


class KfpRunPipelineOperator(BaseOperator):
    """Submit a compiled KFP pipeline and wait for the run (deferrable), at most one run per try.

    :param pipeline_package: compiled pipeline YAML (templated). Default: ``$KFP_PIPELINE_PACKAGE``.
    :param pipeline_params: pipeline arguments (templated); values are converted to the types the
        pipeline declares (``"100"`` -> 100 for an integer parameter) and unknown names are rejected.
    :param kfp_conn_id: Airflow connection selecting the backend (``local`` or ``kfp``).
    :param run_name: explicit run name (templated); default: derived from the DAG run.
    :param run_name_param: pipeline parameter that receives the run name (e.g. a tag the pipeline records
        with its results); None (the default) to pass nothing. Only used when the pipeline declares it
        and ``pipeline_params`` does not set it.
    :param wait_for_completion: wait for the run (else return after submitting).
    :param deferrable: wait in the triggerer rather than in a worker slot. Default: Airflow's
        ``[operators] default_deferrable`` setting.
    :param poll_interval: seconds between looks at the run.
    :param timeout: how long to wait for the run; then it is canceled and the task fails.
    :param max_transient_errors: consecutive transient errors tolerated while waiting.
    :param rerun_failed: when the run of this name already failed or was canceled (the task is being
        retried or was cleared), submit a new attempt instead of failing again.
    :param cancel_on_kill: cancel the run when the task is killed.
    """

    template_fields: Sequence[str] = ("pipeline_package", "pipeline_params", "run_name", "kfp_conn_id")
    template_fields_renderers = {"pipeline_params": "json"}
    operator_extra_links = (KfpRunLink(),)
    ui_color = "#b8e0f7"

    def __init__(
        self,
        *,
        pipeline_package: str | None = None,
        pipeline_params: dict[str, Any] | None = None,
        kfp_conn_id: str = "kfp_default",
        run_name: str | None = None,
        run_name_param: str | None = None,
        wait_for_completion: bool = True,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        timeout: timedelta | float = timedelta(hours=2),
        max_transient_errors: int = DEFAULT_MAX_TRANSIENT_ERRORS,
        rerun_failed: bool = True,
        cancel_on_kill: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.pipeline_package = pipeline_package
        self.pipeline_params = pipeline_params or {}
        self.kfp_conn_id = kfp_conn_id
        self.run_name = run_name
        self.run_name_param = run_name_param
        self.wait_for_completion = wait_for_completion
        self.deferrable = deferrable
        self.poll_interval = float(poll_interval)
        self.timeout = timeout if isinstance(timeout, timedelta) else timedelta(seconds=float(timeout))
        self.max_transient_errors = max_transient_errors
        self.rerun_failed = rerun_failed
        self.cancel_on_kill = cancel_on_kill
        self._run_id: str | None = None  # the KFP run being waited for (on_kill cancels it)
        self._hook: KfpHook | None = None

    # The hook is built lazily: nothing is looked up when the DAG file is parsed.
    @property
    def hook(self) -> KfpHook:
        from airflow_kfp_provider.hooks.kfp import KfpHook

        if self._hook is None or self._hook.kfp_conn_id != self.kfp_conn_id:
            self._hook = KfpHook(kfp_conn_id=self.kfp_conn_id)
        return self._hook

    # -- execute -----------------------------------------------------------------------------
    def execute(self, context: Context) -> Any:
        from airflow_kfp_provider.pipeline_spec import (
            PipelineSpecError,
            coerce_params,
            default_pipeline_package,
            load_pipeline_spec,
            pipeline_name,
            pipeline_parameters,
        )

        try:
            package = str(self.pipeline_package or default_pipeline_package())
            spec = load_pipeline_spec(package)
            coerce_params(spec, self._params_for(spec, "x"))  # all arguments checked before any call
        except PipelineSpecError as exc:
            raise AirflowFailException(f"Bad pipeline input, nothing submitted: {exc}") from exc
        self.log.info(
            "Pipeline %r from %s; parameters: %s",
            pipeline_name(spec),
            package,
            ", ".join(sorted(pipeline_parameters(spec))),
        )

        hook = self.hook
        hook.preflight(package)  # unknown backend, unreachable KFP host, bad runner: fails here
        base_name = self.run_name or build_run_name(
            context["dag"].dag_id, self.task_id, context["run_id"], getattr(context["ti"], "map_index", -1)
        )
        run = self._find_or_submit(hook, spec, package, base_name)
        self._run_id = run.run_id

        ti = context["ti"]
        ti.xcom_push(key="run_id", value=run.run_id)
        ti.xcom_push(key="run_name", value=run.display_name)
        KfpRunLink.persist(context, run.url)
        if run.url:
            self.log.info("Run details: %s", run.url)

        if not self.wait_for_completion:
            return run.to_dict()
        event = run_event(run, run.display_name)
        if event is not None:  # already final (e.g. a retry found the finished run): no deferral
            self.log.info("Run %s is already final (%s); not waiting", run.run_id, run.state)
            return self.execute_complete(context, event)
        end_time = time.time() + self.timeout.total_seconds()
        if not self.deferrable:
            from airflow_kfp_provider.wait import wait_for_run

            event = asyncio.run(
                wait_for_run(
                    hook,
                    run.run_id,
                    run.display_name,
                    poll_interval=self.poll_interval,
                    end_time=end_time,
                    max_transient_errors=self.max_transient_errors,
                    logger=self.log,
                )
            )
            return self.execute_complete(context, event)
        from airflow_kfp_provider.triggers.kfp import KfpRunTrigger

        self.defer(
            trigger=KfpRunTrigger(
                run_id=run.run_id,
                kfp_conn_id=self.kfp_conn_id,
                run_name=run.display_name,
                poll_interval=self.poll_interval,
                end_time=end_time,
                max_transient_errors=self.max_transient_errors,
                cancel_on_kill=self.cancel_on_kill,
            ),
            method_name="execute_complete",
            # A backstop: the trigger sends its own "timeout" event first, so the run gets canceled.
            timeout=self.timeout + timedelta(seconds=max(60.0, 3 * self.poll_interval)),
        )

    def _params_for(self, spec: dict[str, Any], run_name: str) -> dict[str, Any]:
        from airflow_kfp_provider.pipeline_spec import pipeline_parameters

        params = dict(self.pipeline_params or {})
        if self.run_name_param and self.run_name_param in pipeline_parameters(spec):
            params.setdefault(self.run_name_param, run_name)
        return params

    def _find_or_submit(self, hook: KfpHook, spec: dict[str, Any], package: str, base_name: str) -> PipelineRun:
        from airflow_kfp_provider.pipeline_spec import coerce_params
        from airflow_kfp_provider.states import is_failed

        for attempt in range(1, MAX_ATTEMPTS + 1):
            name = attempt_name(base_name, attempt)
            existing = hook.find_run_by_name(name)
            if existing is None:
                return hook.submit_run(name, package, coerce_params(spec, self._params_for(spec, name)))
            if not (self.rerun_failed and is_failed(existing.state)):
                self.log.info(
                    "Found existing run %s named %r (state %s): this task instance already submitted it; "
                    "adopting it instead of submitting again",
                    existing.run_id,
                    name,
                    existing.state,
                )
                return existing
            self.log.info(
                "Run %s named %r ended %s; submitting a new attempt (rerun_failed=True)",
                existing.run_id,
                name,
                existing.state,
            )
        raise AirflowFailException(
            f"{MAX_ATTEMPTS} runs named {base_name!r}(-aN) already failed; fix the pipeline and trigger a new DAG run"
        )

    # -- resume ------------------------------------------------------------------------------
    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        status = event.get("status")
        run_id = event.get("run_id")
        self._run_id = run_id
        message = event.get("message", "")
        if status == "success":
            self.log.info("%s", message)
            run = event.get("run") or {}
            outcome = (run.get("outputs") or {}).get("outcome")
            if outcome:
                self.log.info("Pipeline outcome: %s", outcome)
            return run
        if status == "timeout":
            if self.cancel_on_kill and run_id:
                try:
                    self.hook.cancel_run(run_id)
                    message += "; the run was canceled"
                except Exception as exc:  # still fail with the timeout
                    message += f"; canceling it failed: {exc}"
            raise AirflowException(f"{message}. Raise the operator's timeout if the pipeline needs longer.")
        raise AirflowException(message or f"KFP run {run_id} did not succeed: {event}")

    def on_kill(self) -> None:
        if self.cancel_on_kill and self._run_id:
            try:
                self.hook.cancel_run(self._run_id)
            except Exception as exc:
                self.log.warning("Could not cancel KFP run %s: %s", self._run_id, exc)
