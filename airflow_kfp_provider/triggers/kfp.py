"""KfpRunTrigger: waits in the triggerer for a pipeline run to finish, then emits one event.

The trigger is rebuilt from ``serialize()`` (plain values only) and may run more than once, e.g.
after a triggerer restart: it only reads the run's state, so running it again is harmless.

Event payload (one event, then the trigger returns)::

    {"status": "success" | "failed" | "timeout" | "error",
     "run_id": ..., "run_name": ..., "message": "...", "run": {PipelineRun.to_dict()} or None}
"""
from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_kfp_provider.states import DEFAULT_MAX_TRANSIENT_ERRORS, DEFAULT_POLL_INTERVAL, run_event


class KfpRunTrigger(BaseTrigger):
    """Poll a run through :class:`~airflow_kfp_provider.hooks.kfp.KfpHook` until it is final.

    :param run_id: the run to watch.
    :param kfp_conn_id: connection selecting the backend.
    :param run_name: the run's display name (for messages).
    :param poll_interval: seconds between two looks at the run.
    :param end_time: epoch seconds after which a ``timeout`` event is sent (None: wait forever).
    :param max_transient_errors: consecutive transient errors (unreachable API, 5xx) tolerated before an
        ``error`` event; other errors (run not found, refused credentials, bad configuration) end the
        wait at once.
    :param cancel_on_kill: cancel the run when a user kills the deferred task (mark failed/success, clear).
    """

    def __init__(
        self,
        run_id: str,
        kfp_conn_id: str = "kfp_default",
        run_name: str = "",
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        end_time: float | None = None,
        max_transient_errors: int = DEFAULT_MAX_TRANSIENT_ERRORS,
        cancel_on_kill: bool = True,
    ) -> None:
        super().__init__()
        self.run_id = str(run_id)
        self.kfp_conn_id = str(kfp_conn_id)
        self.run_name = str(run_name or "")
        self.poll_interval = float(poll_interval)
        self.end_time = None if end_time is None else float(end_time)
        self.max_transient_errors = int(max_transient_errors)
        self.cancel_on_kill = bool(cancel_on_kill)
        self._hook: Any = None

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "run_id": self.run_id,
                "kfp_conn_id": self.kfp_conn_id,
                "run_name": self.run_name,
                "poll_interval": self.poll_interval,
                "end_time": self.end_time,
                "max_transient_errors": self.max_transient_errors,
                "cancel_on_kill": self.cancel_on_kill,
            },
        )

    async def _get_hook(self) -> Any:
        if self._hook is None:
            from airflow_kfp_provider.hooks.kfp import KfpHook

            conn = await KfpHook.aget_connection(self.kfp_conn_id)
            self._hook = KfpHook(kfp_conn_id=self.kfp_conn_id, connection=conn)
        return self._hook

    def _event(self, status: str, message: str, run: Any = None) -> TriggerEvent:
        return TriggerEvent({"status": status, "run_id": self.run_id, "run_name": self.run_name,
                             "message": message, "run": run.to_dict() if run is not None else None})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from airflow_kfp_provider.hooks.kfp import KfpTransientError

        errors = 0
        last_state = None
        run = None
        try:
            hook = await self._get_hook()
        except Exception as exc:
            yield self._event("error", f"cannot watch KFP run {self.run_id}: {exc}")
            return
        while True:
            try:
                # The hook's calls are blocking (HTTP, file reads): keep them off the event loop.
                run = await asyncio.to_thread(hook.get_run, self.run_id)
            except KfpTransientError as exc:
                errors += 1
                self.log.warning("Could not read KFP run %s (%d/%d consecutive errors): %s",
                                 self.run_id, errors, self.max_transient_errors, exc)
                if errors > self.max_transient_errors:
                    yield self._event(
                        "error",
                        f"gave up watching KFP run {self.run_id} after {errors} consecutive errors; last: {exc}. "
                        "The run may still be going: check it in the KFP UI, then clear the task (it finds "
                        "the run by name and does not submit a second one)",
                    )
                    return
            except Exception as exc:
                yield self._event("error", f"cannot watch KFP run {self.run_id}: {exc}")
                return
            else:
                errors = 0
                if run.state != last_state:
                    self.log.info("KFP run %s (%s) is %s", self.run_id, run.display_name, run.state)
                    last_state = run.state
                event = run_event(run, self.run_name)
                if event is not None:
                    yield TriggerEvent(event)
                    return
            if self.end_time is not None and time.time() >= self.end_time:
                yield self._event(
                    "timeout",
                    f"KFP run {self.run_id} ({self.run_name}) did not finish in time (last state {last_state})",
                    run,
                )
                return
            await asyncio.sleep(self.poll_interval)

    async def on_kill(self) -> None:
        """A user killed the deferred task: stop the run as well (the operator's on_kill cannot, it is not running)."""
        if not self.cancel_on_kill:
            return
        try:
            hook = await self._get_hook()
            await asyncio.to_thread(hook.cancel_run, self.run_id)
        except Exception as exc:  # logged by the caller as a warning anyway
            self.log.warning("Could not cancel KFP run %s: %s", self.run_id, exc)
