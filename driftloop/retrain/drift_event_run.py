"""The drift_retrain tasks of a run started by the drift watcher (and the report capture).

* :func:`drift_events_of` / :func:`event_payload`: the watcher's asset events that started this run
  (Airflow gives them to the tasks as ``triggering_asset_events``; each event's ``extra`` is
  ``{"from_trigger": True, "payload": <DriftEventTrigger's payload>}``). When several queued up while
  a run was active, the newest one is the run's episode.
* :func:`capture_report`: the serving app's ``GET /drift/report`` HTML, kept for the submit task to
  store with the candidate's MLflow run. Best effort: a problem is a warning and None.
"""

from __future__ import annotations

import logging
from typing import Any

from driftloop.retrain.episodes import check_payload

log = logging.getLogger(__name__)

#: Bigger reports are not kept (XCom lives in Airflow's database).
MAX_REPORT_BYTES = 5_000_000


def _get(obj: Any, key: str) -> Any:
    return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)


def drift_events_of(triggering_asset_events: Any, asset_name: str) -> list[Any]:
    """The watcher's events for ``asset_name`` among a run's triggering asset events (oldest first)."""
    if not triggering_asset_events:
        return []
    found: list[Any] = []
    try:
        items = list(triggering_asset_events.items())
    except Exception as exc:  # an accessor that cannot be read: not an event run
        log.warning("Could not read the run's triggering asset events: %s", exc)
        return []
    for asset, events in items:
        if getattr(asset, "name", None) != asset_name:
            continue
        for event in events or []:
            extra = _get(event, "extra") or {}
            if isinstance(extra, dict) and "payload" in extra:
                found.append(event)
    found.sort(key=lambda e: str(_get(e, "timestamp") or ""))
    return found


def event_payload(triggering_asset_events: Any, asset_name: str) -> dict[str, Any]:
    """The newest drift event's payload, checked; fails the task when there is none or it is malformed."""
    from airflow.sdk.exceptions import AirflowFailException

    from driftloop.retrain.drift import summarize_drift

    events = drift_events_of(triggering_asset_events, asset_name)
    if not events:
        raise AirflowFailException(f"this run has no drift event of asset {asset_name!r}; nothing was submitted")
    try:
        payload = check_payload(_get(events[-1], "extra")["payload"])
    except ValueError as exc:
        raise AirflowFailException(f"malformed drift event, nothing was submitted: {exc}") from None
    if len(events) > 1:
        log.info("%d drift events started this run; using the newest one.", len(events))
    features = {
        name: {"p_value": p, "drift": name in payload.get("drifted_features", [])}
        for name, p in (payload.get("p_values") or {}).items()
    }
    log.info(
        "Drift episode %s (model %s v%s, rows %s-%s): %s",
        payload["episode"],
        payload["model_name"],
        payload["model_version"],
        payload.get("window_first_row"),
        payload.get("window_last_row"),
        summarize_drift({**payload, "features": features}),
    )
    return payload


def capture_report(http_conn_id: str, endpoint: str = "/drift/report", timeout: float = 30.0) -> str | None:
    """The drift report page, or None (with a warning) when it cannot be had. Never raises."""
    try:
        from airflow.providers.http.hooks.http import HttpHook

        response = HttpHook(method="GET", http_conn_id=http_conn_id).run(
            endpoint, headers={"Accept": "text/html"}, extra_options={"check_response": False, "timeout": timeout}
        )
    except Exception as exc:
        log.warning("Could not fetch the drift report (%s %s): %s: %s", http_conn_id, endpoint, type(exc).__name__, exc)
        return None
    if response.status_code != 200:
        log.warning(
            "GET %s answered %s: %s; no drift report kept.", response.url, response.status_code, response.text[:200]
        )
        return None
    if "html" not in response.headers.get("Content-Type", ""):
        log.warning(
            "GET %s did not answer HTML (%s); no drift report kept.", response.url, response.headers.get("Content-Type")
        )
        return None
    if len(response.content) > MAX_REPORT_BYTES:
        log.warning("The drift report is %d bytes (> %d); not kept.", len(response.content), MAX_REPORT_BYTES)
        return None
    log.info("Drift report captured (%d bytes) from %s", len(response.content), response.url)
    text: str = response.text
    return text
