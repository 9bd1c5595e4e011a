"""Every KFP v2beta1 runtime state (and what other versions call them) maps to one meaning."""

from __future__ import annotations

import pytest

from airflow_kfp_provider.states import (
    STATES,
    RunState,
    is_failed,
    is_successful,
    is_terminal,
    normalize_state,
    run_event,
)

# (raw state as a backend reports it, normalized, terminal, successful)
CASES = [
    ("PENDING", RunState.PENDING, False, False),
    ("RUNNING", RunState.RUNNING, False, False),
    ("SUCCEEDED", RunState.SUCCEEDED, True, True),
    ("SKIPPED", RunState.SKIPPED, True, True),
    ("FAILED", RunState.FAILED, True, False),
    ("CANCELING", RunState.CANCELING, False, False),
    ("CANCELED", RunState.CANCELED, True, False),
    ("PAUSED", RunState.PAUSED, False, False),
    ("RUNTIME_STATE_UNSPECIFIED", RunState.UNKNOWN, False, False),
    (None, RunState.UNKNOWN, False, False),
    ("", RunState.UNKNOWN, False, False),
    ("SOMETHING_NEW", RunState.UNKNOWN, False, False),
    ("Succeeded", RunState.SUCCEEDED, True, True),
    ("running", RunState.RUNNING, False, False),
    ("Error", RunState.FAILED, True, False),
    ("Terminating", RunState.CANCELING, False, False),
    ("CANCELLED", RunState.CANCELED, True, False),
]


@pytest.mark.parametrize("raw,state,terminal,successful", CASES)
def test_every_state_is_mapped(raw, state, terminal, successful):
    assert normalize_state(raw) == state
    assert is_terminal(raw) is terminal
    assert is_successful(raw) is successful
    assert is_failed(raw) is (terminal and not successful)


def test_the_v2beta1_enum_is_covered():
    # V2beta1RuntimeState of kfp-server-api, the generated client of the API we talk to.
    from kfp_server_api.models.v2beta1_runtime_state import V2beta1RuntimeState

    api_states = [v for k, v in vars(V2beta1RuntimeState).items() if k.isupper() and isinstance(v, str)]
    assert set(api_states) - {"RUNTIME_STATE_UNSPECIFIED"} <= set(STATES)
    for value in api_states:
        assert normalize_state(value) in STATES


class _Run:
    def __init__(self, state, error=None):
        self.run_id, self.display_name, self.state, self.error, self.url = "r1", "name", state, error, None

    def to_dict(self):
        return {"run_id": self.run_id, "state": self.state}


def test_run_event_only_for_final_states():
    assert run_event(_Run("RUNNING")) is None
    assert run_event(_Run("PAUSED")) is None
    assert run_event(_Run("SUCCEEDED"))["status"] == "success"
    assert run_event(_Run("SKIPPED"))["status"] == "success"
    failed = run_event(_Run("FAILED", error="step x failed"))
    assert failed["status"] == "failed" and "step x failed" in failed["message"]
    assert run_event(_Run("CANCELED"))["status"] == "failed"
