"""KfpRunTrigger: waits in the triggerer for a pipeline run to finish, then emits one event.

The trigger is rebuilt from ``serialize()`` (plain values only) and may run more than once, e.g.
after a triggerer restart: it only reads the run's state, so running it again is harmless. The wait
itself is :func:`airflow_kfp_provider.wait.wait_for_run` (the operator's non-deferrable path runs the
same loop); its event payload::

    {"status": "success" | "failed" | "timeout" | "error",
     "run_id": ..., "run_name": ..., "message": "...", "run": {PipelineRun.to_dict()} or None}
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_kfp_provider.states import DEFAULT_MAX_TRANSIENT_ERRORS, DEFAULT_POLL_INTERVAL

if TYPE_CHECKING:
    from airflow_kfp_provider.hooks.kfp import KfpHook


class KfpRunTrigger(BaseTrigger):
    """Poll a run through :class:`~airflow_kfp_provider.hooks.kfp.KfpHook` until it is final.

    :param run_id: the KFP run to watch.
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
        super().__init__()  # type: ignore[no-untyped-call]
        self.run_id = str(run_id)
        self.kfp_conn_id = str(kfp_conn_id)
        self.run_name = str(run_name or "")
        self.poll_interval = float(poll_interval)
        self.end_time = None if end_time is None else float(end_time)
        self.max_transient_errors = int(max_transient_errors)
        self.cancel_on_kill = bool(cancel_on_kill)
        self._hook: KfpHook | None = None

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

    async def _get_hook(self) -> KfpHook:
        if self._hook is None:
            from airflow_kfp_provider.hooks.kfp import KfpHook

            conn = await KfpHook.aget_connection(self.kfp_conn_id)
            self._hook = KfpHook(kfp_conn_id=self.kfp_conn_id, connection=conn)
        return self._hook

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from airflow_kfp_provider.wait import event, wait_for_run

        try:
            hook = await self._get_hook()
        except Exception as exc:
            message = f"cannot watch KFP run {self.run_id}: {exc}"
            yield TriggerEvent(event("error", self.run_id, self.run_name, message))  # type: ignore[no-untyped-call]
            return
        final = await wait_for_run(
            hook,
            self.run_id,
            self.run_name,
            poll_interval=self.poll_interval,
            end_time=self.end_time,
            max_transient_errors=self.max_transient_errors,
            logger=self.log,
        )
        yield TriggerEvent(final)  # type: ignore[no-untyped-call]

    async def on_kill(self) -> None:
        """A user killed the deferred task: stop the run as well (the operator's on_kill cannot, it is not running)."""
        if not self.cancel_on_kill:
            return
        try:
            hook = await self._get_hook()
            await asyncio.to_thread(hook.cancel_run, self.run_id)
        except Exception as exc:  # logged by the caller as a warning anyway
            self.log.warning("Could not cancel KFP run %s: %s", self.run_id, exc)
