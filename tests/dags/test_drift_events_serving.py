"""DriftEventTrigger against the real serving app under gunicorn (2 workers, real SQLite store, a
champion in a real MLflow server): a drift episode fires once, fresh windows of the same episode do
not, a reset is a new episode, which is blocked until new labels arrive, then fires."""

from __future__ import annotations

import asyncio
import logging

import numpy as np
import pytest
from kfp_test_fixtures import set_conn
from test_drift_events import LOGGER, FakeStateStore, warnings_of

from driftloop.retrain.drift_events import DriftEventTrigger
from driftloop.retrain.episodes import STATE_KEY

WINDOW = 40


@pytest.fixture(scope="module")
def serving_app(mlflow_server, tmp_path_factory):
    from tests.serving.conftest import start_gunicorn, stop_gunicorn
    from tests.serving.pipeline_like import iris_frame, log_like_pipeline

    name = "drift-events-serving"
    X, y = iris_frame()
    log_like_pipeline(mlflow_server, name, X, y, run_tag=f"{name}-v1")
    server = start_gunicorn(
        tmp_path_factory.mktemp("serving"),
        name,
        mlflow_server,
        workers=2,
        extra_env={"DRIFT_WINDOW_SIZE": str(WINDOW)},
    )
    yield server, name
    stop_gunicorn(server)


def shifted(n: int, seed: int) -> list[list[float]]:
    from tests.serving.conftest import shifted_iris

    rows, _ = shifted_iris(n, seed, shift=1.5)
    return np.asarray(rows).tolist()


def label(server, n: int, seed: int) -> None:
    from tests.serving.conftest import shifted_iris

    rows, labels = shifted_iris(n, seed, shift=1.5)
    answer = server.labeller(json={"instances": np.asarray(rows).tolist(), "labels": [int(v) for v in labels]})
    assert answer.status_code == 201, answer.text


def predict(server, rows) -> None:
    answer = server.post("/predict", json={"instances": rows})
    assert answer.status_code == 200, answer.text


def test_the_watcher_against_the_real_serving_app(serving_app, monkeypatch, caplog):
    server, name = serving_app
    set_conn(monkeypatch, "serving_default", server.url)
    status = server.get("/drift/status").json()
    if "window_resets" not in status:
        pytest.fail(f"the serving app does not answer the #13 drift status keys yet: {sorted(status)}")
    caplog.set_level(logging.INFO, logger=LOGGER)
    store = FakeStateStore()
    trigger = DriftEventTrigger(http_conn_id="serving_default", poll_interval=0.05)
    trigger.asset_state_store = store

    def look():
        return asyncio.run(trigger.poll_once())

    assert look() is None  # collecting samples
    label(server, 20, seed=1)  # labelled rows since the champion was served
    predict(server, shifted(WINDOW, seed=2))
    event = look()
    assert event is not None, server.get("/drift/status").json()
    version, epoch = event["model_version"], event["window_epoch"]
    assert event["episode"] == f"{name}:{version}:{epoch}.0" and event["drifted_features"]
    assert event["window_last_row"] - event["window_first_row"] + 1 == WINDOW
    assert event["labelled_rows"] >= 20 and event["labelled_rows_since_served"] >= 20
    assert look() is None  # the same window again
    predict(server, shifted(WINDOW, seed=3))
    assert look() is None  # a fresh window, still drifting: already fired
    assert store.data[STATE_KEY]["decided"]["last_row"] == event["window_last_row"] + WINDOW

    # a person resets the window: a new episode; no new labels since that fire -> blocked, one alert
    reset = server.admin("/drift/reset")
    assert reset.status_code == 200 and reset.json()["window_resets"] == 1, reset.text
    predict(server, shifted(WINDOW, seed=4))
    assert look() is None
    assert store.data[STATE_KEY]["blocked"]["episode"] == f"{name}:{version}:{epoch}.1"
    alerts = [r.getMessage() for r in caplog.records if r.getMessage().startswith("ALERT")]
    assert len(alerts) == 1 and "no labelled feedback since the last drift retrain" in alerts[0]
    # labels arrive; the next fresh window fires the reset's episode
    label(server, 10, seed=5)
    predict(server, shifted(WINDOW, seed=6))
    event2 = look()
    assert event2 is not None and event2["episode"] == f"{name}:{version}:{epoch}.1"
    assert event2["window_resets"] == 1
    assert [w for w in warnings_of(caplog) if not w.startswith("ALERT")] == []  # every answer was usable
