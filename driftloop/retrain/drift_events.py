"""DriftEventTrigger: the serving app's drift as an Airflow asset event (event-driven scheduling).

An ``AssetWatcher`` on the ``serving_drift`` asset (dags/drift_retrain.py) runs this trigger in the
triggerer for as long as the DAG is active. Every ``poll_interval`` seconds it reads ``GET
/drift/status`` through the serving app's HTTP connection and lets
:func:`driftloop.retrain.episodes.decide` say what the look means; only a ``fire`` decision yields a
``TriggerEvent`` (Airflow records it as an asset event with ``extra={"from_trigger": True,
"payload": ...}`` and queues a ``drift_retrain`` run). The decision's state (last decided window,
last fired episode, last blocked alert) is stored in Airflow's asset state store *before* the event
is yielded: a triggerer restart mid-way cannot fire the same episode twice (at worst the event is
lost and the cron catches up). Without a store (a trigger run outside a triggerer) it stays in memory.

Serving down, an error status, an answer that is not a drift report, a missing connection: each is
logged once per change of condition (not once a minute), the trigger keeps polling and fires
nothing. ``run()`` never raises: a watcher whose trigger raised would stop watching.

Why here and not in ``airflow_kfp_provider``: the provider is about Kubeflow Pipelines and imports
nothing of this project (#12); this trigger knows the serving app's drift contract and the episode
rules, so it lives with the DAG's other pieces (next to ``DriftStatusSensor``), importable by the
triggerer (a trigger must not come from the DAG bundle).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseEventTrigger, TriggerEvent

from driftloop.contract import SERVING_CONN_ID
from driftloop.retrain.episodes import STATE_KEY, BadStatus, Look, decide

log = logging.getLogger(__name__)


class DriftEventTrigger(BaseEventTrigger):
    """Poll the serving app's drift status; fire one event per drift episode (see module docstring).

    :param http_conn_id: HTTP connection of the serving app.
    :param endpoint: the drift status path.
    :param poll_interval: seconds between two looks.
    :param request_timeout: seconds for one HTTP request.
    """

    def __init__(
        self,
        http_conn_id: str = SERVING_CONN_ID,
        endpoint: str = "/drift/status",
        poll_interval: float = 60.0,
        request_timeout: float = 10.0,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.http_conn_id = str(http_conn_id)
        self.endpoint = str(endpoint)
        self.poll_interval = float(poll_interval)
        self.request_timeout = float(request_timeout)
        self._memory: dict[str, Any] = {}  # the state when there is no asset state store
        self._condition: str | None = None  # the last trouble logged ("" = healthy)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "http_conn_id": self.http_conn_id,
                "endpoint": self.endpoint,
                "poll_interval": self.poll_interval,
                "request_timeout": self.request_timeout,
            },
        )

    # -- state -------------------------------------------------------------------------------
    async def _load_state(self) -> dict[str, Any]:
        if self.asset_state_store is None:
            return dict(self._memory)
        value = await self.asset_state_store.aget(STATE_KEY, {})
        return dict(value) if isinstance(value, dict) else {}

    async def _save_state(self, state: dict[str, Any]) -> None:
        if self.asset_state_store is None:
            self._memory = json.loads(json.dumps(state))
            return
        await self.asset_state_store.aset(STATE_KEY, state)

    # -- one look ----------------------------------------------------------------------------
    def _trouble(self, condition: str, message: str) -> None:
        """Log a problem once per change of condition (the same outage is not logged every poll)."""
        if condition != self._condition:
            log.warning("Drift watcher: %s; still polling every %g s, no event meanwhile.", message, self.poll_interval)
        self._condition = condition

    def _healthy(self) -> None:
        if self._condition:
            log.info("Drift watcher: %s answers drift reports again.", self.http_conn_id)
        self._condition = ""

    async def _fetch(self) -> Any:
        """The status document, or None after logging why there is none."""
        from airflow.sdk import BaseHook
        from airflow.sdk.exceptions import AirflowNotFoundException

        from driftloop.retrain.settings import connection_base_url

        try:
            conn = await BaseHook.aget_connection(self.http_conn_id)
        except AirflowNotFoundException:
            self._trouble(
                "no-connection",
                f"Airflow connection {self.http_conn_id!r} (the serving app) is not defined: set e.g. "
                f"AIRFLOW_CONN_{self.http_conn_id.upper()}='http://127.0.0.1:8000'",
            )
            return None
        url = connection_base_url(conn) + "/" + self.endpoint.lstrip("/")
        try:
            status_code, text = await asyncio.to_thread(self._get, url)
        except Exception as exc:  # connection refused, timeout, DNS, ...
            self._trouble("unreachable", f"serving app unreachable at {url} ({type(exc).__name__}: {exc})")
            return None
        if status_code != 200:
            self._trouble(f"http-{status_code}", f"GET {url} answered {status_code}: {text[:200]!r}")
            return None
        try:
            return json.loads(text)
        except ValueError:
            self._trouble("not-json", f"GET {url} answered something that is not JSON: {text[:200]!r}")
            return None

    def _get(self, url: str) -> tuple[int, str]:
        import requests

        response = requests.get(url, headers={"Accept": "application/json"}, timeout=self.request_timeout)
        return response.status_code, response.text

    async def _alert(self, message: str) -> None:
        from driftloop.retrain.alerts import post_alert

        text = f"ALERT drift watcher ({self.http_conn_id}): {message}"
        log.error(text)
        try:
            await asyncio.to_thread(post_alert, text)
        except Exception as exc:  # post_alert never raises; belt and braces for the watcher
            log.warning("Could not send the drift alert: %s", exc)

    async def poll_once(self) -> dict[str, Any] | None:
        """One look: the event payload when this look fires, else None. Never raises."""
        try:
            status = await self._fetch()
            if status is None:
                return None
            try:
                look = Look.from_status(status)
            except BadStatus as exc:
                self._trouble(f"bad:{exc}", f"GET {self.endpoint} did not return a usable drift report: {exc}")
                return None
            self._healthy()
            state = await self._load_state()
            decision = decide(look, state)
            if decision.state != state:
                await self._save_state(decision.state)  # before the event: never the same episode twice
            if decision.action == "wait":
                log.debug("Drift watcher: %s", decision.message)
            elif decision.action == "blocked":
                if decision.alert:
                    await self._alert(decision.message)
                else:
                    log.info("Drift watcher: still blocked: %s", decision.message)
            else:
                log.info("Drift watcher: %s (%s)", decision.action, decision.message)
            return decision.event if decision.action == "fire" else None
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the state store failing, a bug: log it, fire nothing, keep watching
            self._trouble(f"error:{type(exc).__name__}", f"a look failed ({type(exc).__name__}: {exc})")
            return None

    async def run(self) -> AsyncIterator[TriggerEvent]:
        log.info(
            "Drift watcher started: GET %s of connection %r every %g s.",
            self.endpoint,
            self.http_conn_id,
            self.poll_interval,
        )
        while True:
            payload = await self.poll_once()
            if payload is not None:
                yield TriggerEvent(payload)  # type: ignore[no-untyped-call]
            await asyncio.sleep(self.poll_interval)
