"""DriftEventTrigger: the watcher's loop against HTTP servers that answer like the serving app, that
are down, or that answer garbage; its state across a restart; its blocked alert.

These tests drive the trigger the way the triggerer does (``async for event in trigger.run()``, with
an asset state store injected before ``run()``), with a fake store of the same async interface. The
run against the real serving app under gunicorn is in test_drift_events_serving.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from drift_docs import status
from kfp_test_fixtures import free_port, set_conn

from driftloop.retrain.drift_events import DriftEventTrigger
from driftloop.retrain.episodes import STATE_KEY

LOGGER = "driftloop.retrain.drift_events"


class FakeStateStore:
    """The part of Airflow's AssetStateStoreAccessors the trigger uses (aget/aset, JSON values)."""

    def __init__(self):
        self.data: dict = {}
        self.fail_set = False
        self.writes = 0

    async def aget(self, key, default=None):
        return json.loads(json.dumps(self.data[key])) if key in self.data else default

    async def aset(self, key, value):
        if self.fail_set:
            raise RuntimeError("state store unavailable")
        self.data[key] = json.loads(json.dumps(value))
        self.writes += 1


class Server:
    """A tiny HTTP server: GET answers ``self.status``/``self.body``; POSTs are recorded (alerts)."""

    def __init__(self):
        self.code = 200
        self.body: str = json.dumps(status())
        self.content_type = "application/json"
        self.gets = 0
        self.posts: list[dict] = []
        state = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                state.gets += 1
                data = state.body.encode()
                self.send_response(state.code)
                self.send_header("Content-Type", state.content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                state.posts.append(json.loads(self.rfile.read(length) or b"{}"))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def answer(self, doc=None, code=200, raw=None, content_type="application/json"):
        self.code, self.content_type = code, content_type
        self.body = raw if raw is not None else json.dumps(doc)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(monkeypatch):
    srv = Server()
    set_conn(monkeypatch, "serving_default", srv.url)
    yield srv
    srv.close()


def make_trigger(store=None, **kwargs) -> DriftEventTrigger:
    trigger = DriftEventTrigger(http_conn_id="serving_default", poll_interval=0.05, **kwargs)
    trigger.asset_state_store = store
    return trigger


async def collect(trigger: DriftEventTrigger, seconds: float) -> list[dict]:
    """Run the trigger as the triggerer does for ``seconds``; the payloads it yielded."""
    events: list[dict] = []

    async def consume():
        async for event in trigger.run():
            events.append(event.payload)

    task = asyncio.create_task(consume())
    await asyncio.sleep(seconds)
    assert not task.done(), f"run() ended: {task.exception() if task.done() else ''}"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return events


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING]


def test_serialize_is_plain_and_round_trips():
    trigger = DriftEventTrigger(http_conn_id="serving_x", poll_interval=30, request_timeout=5)
    path, kwargs = trigger.serialize()
    assert path == "driftloop.retrain.drift_events.DriftEventTrigger"
    assert kwargs == {
        "http_conn_id": "serving_x",
        "endpoint": "/drift/status",
        "poll_interval": 30.0,
        "request_timeout": 5.0,
    }
    json.dumps(kwargs)
    assert DriftEventTrigger(**kwargs).serialize() == (path, kwargs)


def test_one_event_per_episode_state_saved_before_the_event(server):
    store = FakeStateStore()
    trigger = make_trigger(store)

    async def first_event():
        agen = trigger.run()
        event = await agen.__anext__()
        saved = json.loads(json.dumps(store.data.get(STATE_KEY)))  # what the store held when the event came out
        await agen.aclose()
        return event.payload, saved

    payload, saved = asyncio.run(first_event())
    assert payload["episode"] == "iris-model:6:3.0" and payload["drifted_features"] == ["petal_length"]
    assert saved["fired"]["episode"] == "iris-model:6:3.0" and saved["decided"]["last_row"] == 200
    # the watcher keeps polling the same drifting app: no second event, also with fresh rows
    server.answer(status(window_first_row=201, window_last_row=300))
    assert asyncio.run(collect(trigger, 0.5)) == []
    assert store.data[STATE_KEY]["decided"]["last_row"] == 300
    # a new champion starts a new epoch: a new episode, which fires (labels arrived since)
    server.answer(status(model_version="7", window_epoch=4, window_first_row=1, window_last_row=100, labelled_rows=55))
    events = asyncio.run(collect(trigger, 0.5))
    assert [e["episode"] for e in events] == ["iris-model:7:4.0"]


def test_a_restarted_trigger_keeps_the_state_and_fires_nothing_twice(server):
    store = FakeStateStore()
    assert len(asyncio.run(collect(make_trigger(store), 0.4))) == 1
    # the triggerer restarts: a new instance rebuilt from serialize(), the same asset state store
    _, kwargs = make_trigger().serialize()
    again = DriftEventTrigger(**{**kwargs, "poll_interval": 0.05})
    again.asset_state_store = store
    assert asyncio.run(collect(again, 0.4)) == []
    assert server.gets >= 4


def test_without_a_store_the_state_stays_in_memory(server):
    trigger = make_trigger(None)
    assert len(asyncio.run(collect(trigger, 0.4))) == 1
    assert asyncio.run(collect(trigger, 0.3)) == []


def test_no_drift_and_collecting_fire_nothing(server):
    store = FakeStateStore()
    server.answer(status(drift_detected=False, drifted_features=[]))
    assert asyncio.run(collect(make_trigger(store), 0.3)) == []
    server.answer(status(samples=40, window_last_row=140))
    assert asyncio.run(collect(make_trigger(store), 0.3)) == []


def test_serving_down_is_logged_once_and_polling_goes_on(monkeypatch, caplog):
    set_conn(monkeypatch, "serving_default", f"http://127.0.0.1:{free_port()}")
    caplog.set_level(logging.INFO, logger=LOGGER)
    assert asyncio.run(collect(make_trigger(FakeStateStore(), request_timeout=1), 0.5)) == []
    warned = warnings_of(caplog)
    assert len(warned) == 1 and "unreachable" in warned[0] and "still polling" in warned[0]


def test_missing_connection_is_logged_once(monkeypatch, caplog):
    monkeypatch.delenv("AIRFLOW_CONN_SERVING_NOPE", raising=False)
    caplog.set_level(logging.INFO, logger=LOGGER)
    trigger = DriftEventTrigger(http_conn_id="serving_nope", poll_interval=0.05)
    assert asyncio.run(collect(trigger, 0.3)) == []
    warned = warnings_of(caplog)
    assert len(warned) == 1 and "serving_nope" in warned[0] and "AIRFLOW_CONN_SERVING_NOPE" in warned[0]


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ({"raw": "<html>proxy error</html>", "content_type": "text/html"}, "not JSON"),
        ({"doc": {"error": "No model loaded"}, "code": 503}, "answered 503"),
        ({"doc": {"drift_detected": True}}, "usable drift report"),
        ({"doc": status(window_resets="0")}, "window_resets"),
        ({"doc": [1, 2, 3]}, "JSON object"),
    ],
)
def test_garbage_answers_fire_nothing_and_warn_once(server, caplog, answer, expected):
    caplog.set_level(logging.INFO, logger=LOGGER)
    server.answer(**answer)
    store = FakeStateStore()
    assert asyncio.run(collect(make_trigger(store), 0.4)) == []
    assert server.gets >= 3 and store.writes == 0
    warned = warnings_of(caplog)
    assert len(warned) == 1 and expected in warned[0], warned


def test_a_sequence_of_troubles_then_recovery(server, caplog):
    """One warning per change of condition; back to healthy it fires the (real) episode once."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    trigger = make_trigger(FakeStateStore())

    async def scenario():
        events: list[dict] = []
        for answer in (
            {"code": 500, "raw": "boom"},
            {"code": 500, "raw": "boom"},
            {"raw": "garbage"},
            {"doc": status()},
            {"doc": status()},
        ):
            server.answer(**answer)
            payload = await trigger.poll_once()
            if payload:
                events.append(payload)
        return events

    events = asyncio.run(scenario())
    assert len(events) == 1
    assert len(warnings_of(caplog)) == 2
    assert any("answers drift reports again" in r.getMessage() for r in caplog.records)


def test_a_failing_state_store_fires_nothing_and_the_loop_survives(server, caplog):
    store = FakeStateStore()
    store.fail_set = True
    caplog.set_level(logging.INFO, logger=LOGGER)
    trigger = make_trigger(store)
    assert asyncio.run(collect(trigger, 0.3)) == []  # no event it could not remember
    assert any("state store unavailable" in w for w in warnings_of(caplog))
    store.fail_set = False
    assert len(asyncio.run(collect(trigger, 0.3))) == 1


def test_blocked_logs_and_posts_one_alert(server, monkeypatch, caplog):
    set_conn(monkeypatch, "drift_alerts", server.url)
    monkeypatch.setenv("DRIFT_RETRAIN_ALERT_CONN_ID", "drift_alerts")
    caplog.set_level(logging.INFO, logger=LOGGER)
    server.answer(status(labelled_rows_since_served=0))
    store = FakeStateStore()
    assert asyncio.run(collect(make_trigger(store), 0.3)) == []
    # fresh rows, still no labels: blocked again, no second alert
    server.answer(status(labelled_rows_since_served=0, window_first_row=201, window_last_row=300))
    assert asyncio.run(collect(make_trigger(store), 0.3)) == []
    alerts = [r.getMessage() for r in caplog.records if r.getMessage().startswith("ALERT")]
    assert len(alerts) == 1 and "no labelled feedback" in alerts[0] and "iris-model" in alerts[0]
    assert [p["text"] for p in server.posts] == alerts
    assert store.data[STATE_KEY]["blocked"] == {"episode": "iris-model:6:3.0", "labelled_rows": 40}
