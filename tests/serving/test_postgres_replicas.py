"""Two serving replicas on one PostgreSQL store, as on Kubernetes: two gunicorn masters with two
workers each, started as users start them, sharing `SERVING_STORE_URL=postgresql://…` on a real
local PostgreSQL server (its own for this module: one test stops and restarts it)."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import psycopg
import pytest
import requests

from stack.local_postgres import start_local_postgres
from tests.serving.conftest import ADMIN_TOKEN, shifted_iris, start_gunicorn, stop_gunicorn
from tests.serving.pipeline_like import iris_frame, log_like_pipeline

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def pg():
    server = start_local_postgres()
    yield server
    server.destroy()


@pytest.fixture(scope="module")
def store_url(pg):
    return pg.create_database("serving")


@pytest.fixture(scope="module")
def replicas(mlflow_server, model_name, champion, store_url, tmp_path_factory):
    env = {"SERVING_STORE_URL": store_url, "SERVING_LOAD_RETRY_SECONDS": "2"}
    a = start_gunicorn(tmp_path_factory.mktemp("replica-a"), model_name, mlflow_server, workers=2, extra_env=env)
    b = start_gunicorn(tmp_path_factory.mktemp("replica-b"), model_name, mlflow_server, workers=2, extra_env=env)
    pair = [a, b]
    yield pair
    for srv in pair:
        stop_gunicorn(srv)


def _metric(srv, name: str) -> float:
    text = srv.get("/metrics").text
    values = [float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+]+)$", text, re.M)]
    return sum(values)


def _newest_rows(store_url: str, n: int) -> np.ndarray:
    with psycopg.connect(store_url) as conn:
        blobs = conn.execute("SELECT x FROM window_rows ORDER BY id DESC LIMIT %s", (n,)).fetchall()
    return np.array([np.frombuffer(bytes(b[0]), dtype=np.float64) for b in reversed(blobs)])


def test_both_replicas_see_one_window_and_decide_alike(replicas):
    a, b = replicas
    assert a.post("/drift/reset", headers=AUTH).status_code == 200
    rows, _ = shifted_iris(200, seed=3, shift=0.8)
    served_by = {"a": 0, "b": 0}

    def send(i):
        srv, key = (a, "a") if i % 2 == 0 else (b, "b")
        r = srv.post("/predict", json={"features": [float(v) for v in rows[i]]})
        assert r.status_code == 200, r.text
        return key, r.headers["X-Serving-Worker"]

    with ThreadPoolExecutor(4) as pool:
        answered = list(pool.map(send, range(200)))
    for key, _ in answered:
        served_by[key] += 1
    assert served_by == {"a": 100, "b": 100}
    assert len({w for _, w in answered}) == 4  # two workers of each replica answered
    sa, sb = a.get("/drift/status").json(), b.get("/drift/status").json()
    assert sa["samples"] == sb["samples"] == 100  # the window size: 200 rows from both, one window
    assert sa["drift_detected"] is sb["drift_detected"] is True
    assert sa["features"] == sb["features"] and sa["drifted_features"] == sb["drifted_features"]


def test_a_reload_through_one_replica_reaches_the_other_on_its_next_request(replicas, mlflow_server, model_name):
    a, b = replicas
    before = b.get("/model/info").json()["version"]
    X, y = iris_frame()
    new = log_like_pipeline(mlflow_server, model_name, X, y, n_estimators=12, run_tag="replica-reload")
    assert b.get("/model/info").json()["version"] == before  # the alias moved, nothing reloaded yet
    r = a.post("/model/reload", headers=AUTH)
    assert r.status_code == 200 and r.json()["version"] == new.version, r.text
    # the very next requests on the other replica, on both its workers, use the new version
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: b.post("/predict", json={"features": [5.1, 3.5, 1.4, 0.2]}), range(8)))
    assert {r.status_code for r in answers} == {200}
    assert {r.json()["model_version"] for r in answers} == {new.version}
    assert {r.json()["version"] for r in (b.get("/model/info"), a.get("/model/info"))} == {new.version}
    assert b.get("/drift/status").json()["samples"] == 8  # a new window everywhere: only the rows since the reload


def test_database_restart_never_fails_a_prediction_and_drift_status_recovers(replicas, pg, store_url):
    a, b = replicas
    rows, _ = shifted_iris(40, seed=5, shift=0.0)
    for i in range(40):
        assert (a if i % 2 else b).post("/predict", json={"features": [float(v) for v in rows[i]]}).status_code == 200
    stored_before = _newest_rows(store_url, 40)
    unrecorded_before = _metric(a, "serving_window_rows_unrecorded_total")

    stop, failures, answered = threading.Event(), [], []

    def traffic(srv):
        with requests.Session() as session:
            while not stop.is_set():
                try:
                    r = session.post(srv.url + "/predict", json={"features": [5.9, 3.0, 5.1, 1.8]}, timeout=30)
                    (answered if r.status_code == 200 else failures).append((r.status_code, r.text[:200]))
                except requests.RequestException as exc:
                    failures.append(("exception", str(exc)))
                time.sleep(0.01)

    threads = [threading.Thread(target=traffic, args=(srv,)) for srv in (a, b)]
    for t in threads:
        t.start()
    try:
        time.sleep(1)
        pg.stop("fast")
        time.sleep(4)
        for srv in (a, b):
            health = srv.get("/health")
            assert health.status_code == 200, health.text  # ready: the model is loaded
            body = health.json()
            assert body["status"] == "degraded" and body["store"]["ok"] is False
            assert "127.0.0.1" in body["reason"] and pg.password not in health.text
            drift = srv.get("/drift/status")
            assert drift.status_code == 503 and "state store" in drift.json()["error"], drift.text
            assert "postgresql://" in drift.json()["error"] and pg.password not in drift.text
        during = len(answered)
        pg.start()
        deadline = time.monotonic() + 30
        recovered = set()
        while len(recovered) < 2 and time.monotonic() < deadline:
            for name, srv in (("a", a), ("b", b)):
                if srv.get("/drift/status").status_code == 200:
                    recovered.add(name)
            time.sleep(0.5)
        assert recovered == {"a", "b"}, "/drift/status did not recover without a restart"
        time.sleep(1)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert failures == [], failures[:5]
    assert during > 20 and len(answered) > during  # predictions went on during the outage and after
    assert _metric(a, "serving_window_rows_unrecorded_total") > unrecorded_before
    deadline = time.monotonic() + 15  # every worker of both replicas reports the store healthy again
    healthy = set()
    while len(healthy) < 4 and time.monotonic() < deadline:
        for srv in (a, b):
            r = srv.get("/health")
            if r.json()["status"] == "ok" and r.json()["store"]["ok"] is True:
                healthy.add(r.headers["X-Serving-Worker"])
        time.sleep(0.2)
    assert len(healthy) == 4, f"workers healthy again: {sorted(healthy)}"
    # nothing stored before the outage was lost (the traffic rows came after them)
    with psycopg.connect(store_url) as conn:
        kept = conn.execute("SELECT x FROM window_rows ORDER BY id").fetchall()
    kept_rows = {tuple(np.frombuffer(bytes(k[0]), dtype=np.float64)) for k in kept}
    assert {tuple(r) for r in stored_before} <= kept_rows


def test_a_killed_replica_loses_no_row_it_answered(replicas, store_url):
    a, b = replicas
    assert b.post("/drift/reset", headers=AUTH).status_code == 200
    rows, _ = shifted_iris(60, seed=9, shift=0.0)
    sent = []
    with ThreadPoolExecutor(4) as pool:
        for r, row in zip(
            pool.map(lambda row: a.post("/predict", json={"features": [float(v) for v in row]}), rows),
            rows,
            strict=True,
        ):
            assert r.status_code == 200
            sent.append(tuple(float(v) for v in row))
    os.killpg(a.proc.pid, signal.SIGKILL)  # the whole replica, master and workers, without warning
    a.proc.wait(timeout=10)
    stored = {tuple(r) for r in _newest_rows(store_url, 60)}
    assert stored == set(sent)
    assert b.get("/drift/status").json()["samples"] == 60  # the surviving replica sees them
