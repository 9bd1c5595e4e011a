"""The one place where pipeline-run states are defined and mapped.

Both backends report the states of the KFP v2beta1 API (``V2beta1RuntimeState``): the ``kfp``
backend gets them from the KFP API server, the ``local`` backend writes them into its run files
(:mod:`airflow_kfp_provider.local_runs` uses these names). Everything else (operator, trigger, sensor,
DAG) asks this module what a state means.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_kfp_provider.hooks.base import PipelineRun


class RunState:
    """Normalized run states (the KFP v2beta1 ``RuntimeState`` names plus ``UNKNOWN``)."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    SKIPPED = "SKIPPED"
    FAILED = "FAILED"
    CANCELING = "CANCELING"
    CANCELED = "CANCELED"
    PAUSED = "PAUSED"
    UNKNOWN = "UNKNOWN"


@dataclass(frozen=True)
class StateInfo:
    terminal: bool
    successful: bool
    meaning: str


#: What each state means for a caller that waits for a run.
#: SKIPPED is how KFP reports a run whose work was skipped (e.g. fully cached): it ended without error.
#: PAUSED is not final: a paused run can be resumed, so we keep waiting (the operator's timeout bounds it).
#: UNKNOWN (RUNTIME_STATE_UNSPECIFIED, an empty or an unrecognised value) is not final either: the run
#: exists but the server did not say how it is doing yet.
STATES: dict[str, StateInfo] = {
    RunState.PENDING: StateInfo(False, False, "accepted, waiting to start"),
    RunState.RUNNING: StateInfo(False, False, "running"),
    RunState.SUCCEEDED: StateInfo(True, True, "finished successfully"),
    RunState.SKIPPED: StateInfo(True, True, "skipped by KFP (for example fully cached); no step failed"),
    RunState.FAILED: StateInfo(True, False, "a step failed"),
    RunState.CANCELING: StateInfo(False, False, "being canceled"),
    RunState.CANCELED: StateInfo(True, False, "canceled"),
    RunState.PAUSED: StateInfo(False, False, "paused; it can be resumed"),
    RunState.UNKNOWN: StateInfo(False, False, "state not reported (yet)"),
}

# Spellings seen from other KFP/Argo versions, mapped onto the v2beta1 names.
_ALIASES = {
    "RUNTIME_STATE_UNSPECIFIED": RunState.UNKNOWN,
    "": RunState.UNKNOWN,
    "ERROR": RunState.FAILED,
    "TERMINATING": RunState.CANCELING,
    "TERMINATED": RunState.CANCELED,
    "CANCELLING": RunState.CANCELING,
    "CANCELLED": RunState.CANCELED,
    "COMPLETED": RunState.SUCCEEDED,
}


def normalize_state(raw: object) -> str:
    """Map whatever a backend reported (``"SUCCEEDED"``, ``"Succeeded"``, ``None``, ...) to a RunState."""
    if raw is None:
        return RunState.UNKNOWN
    # kfp_server_api returns plain strings; tolerate enum-like objects too.
    text = str(getattr(raw, "value", raw)).strip().upper()
    if text in STATES:
        return text
    return _ALIASES.get(text, RunState.UNKNOWN)


def is_terminal(state: str) -> bool:
    return STATES[normalize_state(state)].terminal


def is_successful(state: str) -> bool:
    return STATES[normalize_state(state)].successful


def is_failed(state: str) -> bool:
    """Finished without success (FAILED or CANCELED)."""
    info = STATES[normalize_state(state)]
    return info.terminal and not info.successful


DEFAULT_POLL_INTERVAL = 30.0
DEFAULT_MAX_TRANSIENT_ERRORS = 5


def run_event(run: PipelineRun, run_name: str = "") -> dict[str, Any] | None:
    """The wait's final event for a run in a final state, or None while it is still going.

    Used by the wait loop (:mod:`airflow_kfp_provider.wait`), the sensor and the operator (which skips
    deferral for an already final run)::

        {"status": "success" | "failed", "run_id", "run_name", "message", "run": run.to_dict()}
    """
    state = normalize_state(run.state)
    if not is_terminal(state):
        return None
    data = run.to_dict()
    name = run.display_name or run_name
    if is_successful(state):
        return {
            "status": "success",
            "run_id": run.run_id,
            "run_name": name,
            "run": data,
            "message": f"KFP run {run.run_id} ({name}) {STATES[state].meaning} [{state}]",
        }
    where = f"; details: {run.url}" if run.url else ""
    return {
        "status": "failed",
        "run_id": run.run_id,
        "run_name": name,
        "run": data,
        "message": f"KFP run {run.run_id} ({name}) ended {state}: {run.error or 'no error message'}{where}",
    }
