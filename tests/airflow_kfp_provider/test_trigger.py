"""KfpRunTrigger in the providers' style: serialize round trip, one event per final state, transient
errors tolerated up to a limit, persistent ones reported, timeout, on_kill."""

from __future__ import annotations

import asyncio
import json
import time
from unittest import mock

import pytest

from airflow_kfp_provider.exceptions import KfpRunNotFound, KfpTransientError
from airflow_kfp_provider.hooks.base import PipelineRun
from airflow_kfp_provider.triggers.kfp import KfpRunTrigger

CLASSPATH = "airflow_kfp_provider.triggers.kfp.KfpRunTrigger"


def _run(state, error=None):
    return PipelineRun(run_id="run-1", display_name="name-1", state=state, backend="kfp", error=error)


def _events(trigger, hook):
    async def collect():
        out = []
        with mock.patch.object(KfpRunTrigger, "_get_hook", mock.AsyncMock(return_value=hook)):
            async for event in trigger.run():
                out.append(event)
        return out

    return asyncio.run(collect())


def _hook(*results):
    hook = mock.MagicMock()
    hook.get_run.side_effect = list(results)
    return hook


def test_serialize_round_trip():
    trigger = KfpRunTrigger(
        run_id="run-1",
        kfp_conn_id="kfp_x",
        run_name="name-1",
        poll_interval=2,
        end_time=1234.5,
        max_transient_errors=3,
        cancel_on_kill=False,
    )
    classpath, kwargs = trigger.serialize()
    assert classpath == CLASSPATH
    assert kwargs == {
        "run_id": "run-1",
        "kfp_conn_id": "kfp_x",
        "run_name": "name-1",
        "poll_interval": 2.0,
        "end_time": 1234.5,
        "max_transient_errors": 3,
        "cancel_on_kill": False,
    }
    assert json.loads(json.dumps(kwargs)) == kwargs  # plain values only
    # the way the triggerer (and dag.test) rebuilds it: serde-encode, decode, import, instantiate
    from airflow.sdk._shared.module_loading import import_string
    from airflow.sdk.serde import deserialize, serialize

    rebuilt = import_string(classpath)(**deserialize(serialize(kwargs)))
    assert rebuilt.serialize() == (classpath, kwargs)


def test_success_after_polling():
    trigger = KfpRunTrigger(run_id="run-1", poll_interval=0)
    events = _events(trigger, _hook(_run("PENDING"), _run("RUNNING"), _run("PAUSED"), _run("SUCCEEDED")))
    assert len(events) == 1
    payload = events[0].payload
    assert payload["status"] == "success" and payload["run_id"] == "run-1"
    assert payload["run"]["state"] == "SUCCEEDED"


@pytest.mark.parametrize("state", ["FAILED", "CANCELED"])
def test_failure_states_emit_failed_with_the_error(state):
    events = _events(KfpRunTrigger(run_id="run-1", poll_interval=0), _hook(_run(state, error="boom in train")))
    assert [e.payload["status"] for e in events] == ["failed"]
    assert "boom in train" in events[0].payload["message"] and state in events[0].payload["message"]


def test_skipped_counts_as_success():
    events = _events(KfpRunTrigger(run_id="run-1", poll_interval=0), _hook(_run("SKIPPED")))
    assert events[0].payload["status"] == "success"


def test_transient_errors_are_tolerated():
    hook = _hook(
        KfpTransientError("503"),
        KfpTransientError("refused"),
        _run("RUNNING"),
        KfpTransientError("503"),
        KfpTransientError("503"),
        _run("SUCCEEDED"),
    )
    events = _events(KfpRunTrigger(run_id="run-1", poll_interval=0, max_transient_errors=2), hook)
    assert [e.payload["status"] for e in events] == ["success"]
    assert hook.get_run.call_count == 6


def test_persistent_transient_errors_are_reported():
    hook = _hook(*[KfpTransientError("connection refused")] * 4)
    events = _events(KfpRunTrigger(run_id="run-1", poll_interval=0, max_transient_errors=3), hook)
    assert [e.payload["status"] for e in events] == ["error"]
    message = events[0].payload["message"]
    assert "gave up" in message and "4 consecutive errors" in message and "connection refused" in message


def test_non_transient_error_ends_at_once():
    hook = _hook(KfpRunNotFound("run-1 not found"), _run("SUCCEEDED"))
    events = _events(KfpRunTrigger(run_id="run-1", poll_interval=0), hook)
    assert [e.payload["status"] for e in events] == ["error"]
    assert "not found" in events[0].payload["message"]
    assert hook.get_run.call_count == 1


def test_deadline_emits_timeout():
    hook = mock.MagicMock()
    hook.get_run.return_value = _run("RUNNING")
    events = _events(KfpRunTrigger(run_id="run-1", poll_interval=0, end_time=time.time() - 1), hook)
    assert [e.payload["status"] for e in events] == ["timeout"]
    assert events[0].payload["run"]["state"] == "RUNNING"


def test_on_kill_cancels_the_run():
    hook = mock.MagicMock()
    trigger = KfpRunTrigger(run_id="run-1")
    with mock.patch.object(KfpRunTrigger, "_get_hook", mock.AsyncMock(return_value=hook)):
        asyncio.run(trigger.on_kill())
    hook.cancel_run.assert_called_once_with("run-1")
    hook.reset_mock()
    with mock.patch.object(KfpRunTrigger, "_get_hook", mock.AsyncMock(return_value=hook)):
        asyncio.run(KfpRunTrigger(run_id="run-1", cancel_on_kill=False).on_kill())
    hook.cancel_run.assert_not_called()


def test_hook_is_built_from_an_async_connection_lookup(monkeypatch, tmp_path):
    from kfp_test_fixtures import local_conn, set_conn

    set_conn(monkeypatch, "kfp_default", local_conn(tmp_path))
    trigger = KfpRunTrigger(run_id="missing", poll_interval=0)
    events = asyncio.run(_first(trigger))
    assert events.payload["status"] == "error" and "no local run" in events.payload["message"]


async def _first(trigger):
    async for event in trigger.run():
        return event
