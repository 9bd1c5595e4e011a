"""The one loop that waits for a pipeline run: used by the trigger (in the triggerer) and by the operator
when it waits in the worker (``deferrable=False``, through ``asyncio.run``).

Transient errors (``KfpTransientError``: the API unreachable, 5xx, 429) are retried with tenacity, one
try every ``poll_interval`` seconds, up to ``max_transient_errors`` consecutive retries; any other error
ends the wait at once. The result is the wait's final event::

    {"status": "success" | "failed" | "timeout" | "error",
     "run_id": ..., "run_name": ..., "message": "...", "run": {PipelineRun.to_dict()} or None}
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt, wait_fixed

from airflow_kfp_provider.exceptions import KfpTransientError
from airflow_kfp_provider.hooks.base import PipelineRun
from airflow_kfp_provider.states import run_event

log = logging.getLogger(__name__)


class RunReader(Protocol):
    def get_run(self, run_id: str) -> PipelineRun: ...


class Logger(Protocol):
    """What the loop needs of a logger: a logging.Logger or an Airflow task/trigger's ``self.log``."""

    def info(self, event: Any, *args: Any) -> Any: ...

    def warning(self, event: Any, *args: Any) -> Any: ...


def event(status: str, run_id: str, run_name: str, message: str, run: PipelineRun | None = None) -> dict[str, Any]:
    return {
        "status": status,
        "run_id": run_id,
        "run_name": run_name,
        "message": message,
        "run": run.to_dict() if run is not None else None,
    }


async def wait_for_run(
    hook: RunReader,
    run_id: str,
    run_name: str = "",
    *,
    poll_interval: float,
    end_time: float | None,
    max_transient_errors: int,
    logger: Logger | None = None,
) -> dict[str, Any]:
    """Poll ``hook.get_run(run_id)`` (in a thread: it blocks) until the run is final or ``end_time``
    (epoch seconds) has passed; return the final event."""
    out: Logger = logger or log

    def _warn(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        out.warning(
            "Could not read KFP run %s (%d/%d consecutive errors): %s",
            run_id,
            state.attempt_number,
            max_transient_errors,
            exc,
        )

    last_state: str | None = None
    while True:
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(KfpTransientError),
            stop=stop_after_attempt(max_transient_errors + 1),
            wait=wait_fixed(poll_interval),
            before_sleep=_warn,
            reraise=True,
        )
        try:
            run: PipelineRun = await retrying(asyncio.to_thread, hook.get_run, run_id)
        except KfpTransientError as exc:
            return event(
                "error",
                run_id,
                run_name,
                f"gave up watching KFP run {run_id} after {max_transient_errors + 1} consecutive errors; "
                f"last: {exc}. The run may still be going: check it in the KFP UI, then clear the task (it "
                "finds the run by name and does not submit a second one)",
            )
        except Exception as exc:
            return event("error", run_id, run_name, f"cannot watch KFP run {run_id}: {exc}")
        if run.state != last_state:
            out.info("KFP run %s (%s) is %s", run_id, run.display_name, run.state)
            last_state = run.state
        final = run_event(run, run_name)
        if final is not None:
            return final
        if end_time is not None and time.time() >= end_time:
            return event(
                "timeout",
                run_id,
                run_name,
                f"KFP run {run_id} ({run_name}) did not finish in time (last state {last_state})",
                run,
            )
        await asyncio.sleep(poll_interval)
