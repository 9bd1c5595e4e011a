"""The app under a real gunicorn with two workers, as users start it:

    gunicorn -c serving/gunicorn.conf.py 'serving.app:create_app()'

The seed's e2e steps, one drift window for all workers, restarts, reload of every worker, bad input,
and the loop settling after a retrain that learned from the shifted data.
"""

from __future__ import annotations

import csv
import io
import re
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

from tests.serving.conftest import ADMIN_TOKEN, FEEDBACK_TOKEN, as_frame, shifted_iris, start_gunicorn, stop_gunicorn
from tests.serving.pipeline_like import iris_frame, log_like_pipeline

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
FEEDBACK_AUTH = {"Authorization": f"Bearer {FEEDBACK_TOKEN}"}
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("gunicorn-state")


@pytest.fixture(scope="module")
def server(mlflow_server, model_name, champion, state_dir):
    srv = start_gunicorn(state_dir, model_name, mlflow_server, workers=2)
    holder = {"server": srv}
    yield holder
    stop_gunicorn(holder["server"])


def _reads(srv, path: str, n: int, min_workers: int = 2, max_reads: int = 200):
    """n reads of `path`, sent 4 at a time so that both workers answer; returns (bodies, worker pids)."""
    bodies, workers = [], set()
    with ThreadPoolExecutor(4) as pool:
        while len(bodies) < n or (len(workers) < min_workers and len(bodies) < max_reads):
            for resp in pool.map(lambda _: srv.get(path), range(4)):
                assert resp.status_code == 200, resp.text
                bodies.append(resp.json())
                workers.add(resp.headers["X-Serving-Worker"])
    return bodies, workers


def _window_rows(state_dir) -> tuple[int, int]:
    with sqlite3.connect(state_dir / "serving.sqlite3") as conn:
        return conn.execute("SELECT COUNT(*), COALESCE(MAX(id), 0) FROM window_rows").fetchone()


def _feedback_rows(state_dir) -> int:
    with sqlite3.connect(state_dir / "serving.sqlite3") as conn:
        return conn.execute("SELECT COUNT(*) FROM feedback").fetchone()[0]


def test_seed_e2e_steps(server, champion):
    srv = server["server"]
    # 1. health
    health = srv.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    # 2. model info
    info = srv.get("/model/info").json()
    assert info["name"] == champion.name and info["version"] == champion.version and info["backend"] == "onnx"
    # 3. prediction
    pred = srv.post("/predict", json={"features": [5.1, 3.5, 1.4, 0.2]})
    assert pred.status_code == 200 and pred.json()["prediction"] == 0
    # 4. 100 shifted samples
    with requests.Session() as session:
        for _ in range(100):
            r = session.post(srv.url + "/predict", json={"features": [7.1, 5.5, 3.4, 2.2]}, timeout=30)
            assert r.status_code == 200
    # 5. drift detected, whichever worker answers
    bodies, workers = _reads(srv, "/drift/status", 4)
    for status in bodies:
        assert status["drift_detected"] is True and status["samples"] == 100
        assert status["threshold"] == 0.05 and set(status["features"]) == {f"feature_{i}" for i in range(4)}


def test_drift_report_under_gunicorn(server):
    """The page of the shifted window above, from both workers (each renders it once, then serves its copy)."""
    srv = server["server"]
    status = srv.get("/drift/status").json()
    pages, workers = {}, set()
    with ThreadPoolExecutor(4) as pool:
        while len(workers) < 2 and len(pages) < 40:
            for resp in pool.map(lambda _: srv.get("/drift/report"), range(4)):
                assert resp.status_code == 200, resp.text[:500]
                assert resp.headers["Content-Type"] == "text/html; charset=utf-8"
                assert resp.headers["Content-Security-Policy"].startswith("default-src 'none'")
                workers.add(resp.headers["X-Serving-Worker"])
                pages[len(pages)] = resp.text
    assert len(workers) == 2
    for page in pages.values():
        assert "Drift detected" in page and page.count('<figure class="feature-chart') == 4
        assert f"{status['window_first_row']}-{status['window_last_row']}" in page
    assert srv.get("/drift/report").headers["X-Report-Cache"] == "hit"


def test_one_window_for_all_workers(server, state_dir):
    srv = server["server"]
    assert srv.post("/drift/reset", headers=AUTH).status_code == 200
    X = iris_frame()[0].to_numpy()
    rng = np.random.default_rng(7)
    rows = X[rng.integers(0, len(X), 400)] + rng.normal(0, 0.02, (400, 4))
    answered_by = set()
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda r: srv.post("/predict", json={"features": [float(v) for v in r]}), rows))
    for r in results:
        assert r.status_code == 200
        answered_by.add(r.headers["X-Serving-Worker"])
    assert len(answered_by) == 2, "both workers should have predicted"

    bodies, workers = _reads(srv, "/drift/status", 20)
    assert len(workers) == 2
    first = bodies[0]
    assert first["samples"] == 100 and first["window_size"] == 100 and "reason" not in first
    for body in bodies[1:]:
        assert body["samples"] == first["samples"]
        assert {k: v["p_value"] for k, v in body["features"].items()} == {
            k: v["p_value"] for k, v in first["features"].items()
        }
        assert body["drift_detected"] == first["drift_detected"]
    assert first["drift_detected"] is False  # traffic from the training distribution
    count, _ = _window_rows(state_dir)
    assert count >= 100

    # the metrics of both workers add up, whichever worker is scraped
    texts = {srv.get("/metrics").text for _ in range(4)}
    for text in texts:
        total = sum(float(v) for v in re.findall(r"^serving_predicted_rows_total\{[^}]*\} ([0-9.e+]+)$", text, re.M))
        assert total >= 400 + 101


def test_bad_input_changes_nothing_and_workers_survive(server, state_dir):
    srv = server["server"]
    before_rows, before_feedback = _window_rows(state_dir), _feedback_rows(state_dir)
    status_before = srv.get("/drift/status").json()
    big = '{"instances": [' + ",".join(["[1.0, 2.0, 3.0, 4.0]"] * 60000) + "]}"  # ~1.3 MB > 1 MiB limit
    cases = [
        ("/predict", dict(data="{oops", headers={"Content-Type": "application/json"}), 400),
        ("/predict", dict(data='{"features": [1, 2, 3, 4]}', headers={"Content-Type": "text/plain"}), 415),
        ("/predict", dict(json={"feature": [1, 2, 3, 4]}), 400),
        ("/predict", dict(json={"features": [1, 2, 3]}), 400),
        ("/predict", dict(json={"features": [1, 2, 3, "x"]}), 400),
        ("/predict", dict(json={"features": [1, 2, 3, False]}), 400),
        ("/predict", dict(json={"features": [1, 2, 3, None]}), 400),
        ("/predict", dict(data='{"features": [NaN, 2, 3, 4]}', headers={"Content-Type": "application/json"}), 400),
        ("/predict", dict(data='{"features": [Infinity, 2, 3, 4]}', headers={"Content-Type": "application/json"}), 400),
        ("/predict", dict(json={"features": [[1, 2, 3, 4]]}), 400),
        ("/predict", dict(json={"instances": []}), 400),
        ("/predict", dict(json={"instances": [[1, 2, 3, 4]] * 1001}), 400),
        ("/predict", dict(data=big, headers={"Content-Type": "application/json"}), 413),
        ("/feedback", dict(json={"features": [1, 2, 3, 4], "label": None}, headers=FEEDBACK_AUTH), 400),
        (
            "/feedback",
            dict(json={"features": [1, 2, 3, 4], "label": 0, "source": "=cmd|x"}, headers=FEEDBACK_AUTH),
            400,
        ),
        ("/feedback", dict(data=big, headers={**JSON, **FEEDBACK_AUTH}), 413),
        ("/feedback", dict(json={"features": [1, 2, 3, 4], "label": 0}), 401),
        (
            "/feedback",
            dict(json={"features": [1, 2, 3, 4], "label": 0}, headers={"Authorization": "Bearer wrong"}),
            401,
        ),
        ("/drift/reset", dict(headers={"Authorization": "Bearer wrong"}), 401),
        ("/model/reload", dict(headers={"Authorization": "Bearer wrong"}), 401),
    ]
    for path, kwargs, status in cases:
        try:
            resp = srv.post(path, **kwargs)
        except requests.ConnectionError:  # the server may close the socket on an oversized body
            assert status == 413
            continue
        assert resp.status_code == status, (path, kwargs.get("json"), resp.status_code, resp.text[:300])
        assert resp.headers["Content-Type"].startswith("application/json") and resp.json()["error"]
        if status == 401:
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    export = srv.get("/feedback/export", headers={"Authorization": "Bearer wrong"})
    assert export.status_code == 401
    assert _window_rows(state_dir) == before_rows and _feedback_rows(state_dir) == before_feedback
    after = srv.get("/drift/status").json()
    assert after["samples"] == status_before["samples"] and after["features"] == status_before["features"]
    # the workers are the ones from the start: none crashed or was replaced
    assert srv.proc.poll() is None
    assert srv.log_text().count("Booting worker") == 2, srv.log_text()[-3000:]


def test_restart_keeps_the_window(server, mlflow_server, model_name, state_dir):
    srv = server["server"]
    before = srv.get("/drift/status").json()
    assert before["samples"] == 100
    stop_gunicorn(srv)
    server["server"] = srv = start_gunicorn(state_dir, model_name, mlflow_server, workers=2)
    bodies, _ = _reads(srv, "/drift/status", 4)
    for after in bodies:
        assert after["samples"] == before["samples"] and after["model_version"] == before["model_version"]
        assert after["features"] == before["features"]
        assert after["window_started_at"] == before["window_started_at"]


def test_reload_moves_every_worker_and_the_loop_settles(server, mlflow_server, model_name, champion, state_dir):
    srv = server["server"]
    assert srv.post("/drift/reset", headers=AUTH).status_code == 200
    # a real shift: petal length +0.5 cm. Clients send it and later label it (feedback).
    rows, labels = shifted_iris(300, seed=11)
    for start in range(0, 300, 50):
        chunk = [[float(v) for v in r] for r in rows[start : start + 50]]
        assert srv.post("/predict", json={"instances": chunk}).status_code == 200
        fb = srv.labeller(
            json={"instances": chunk, "labels": [int(v) for v in labels[start : start + 50]], "source": "test-labeller"}
        )
        assert fb.status_code == 201
    status = srv.get("/drift/status").json()
    assert status["drift_detected"] is True and "petal_length" in status["drifted_features"]

    # the retrain learns from the exported feedback (what the pipeline's load_data fetches)
    export = srv.get("/feedback/export", headers=AUTH)
    assert export.status_code == 200
    table = list(csv.reader(io.StringIO(export.text)))
    assert table[0] == ["sepal_length", "sepal_width", "petal_length", "petal_width", "target"]
    assert len(table) - 1 == 300
    data = np.array(table[1:], dtype=float)
    new = log_like_pipeline(
        mlflow_server, model_name, *as_frame(data[:, :4], data[:, 4].astype(int)), run_tag="retrained-on-feedback"
    )

    # clients keep predicting while the app reloads: no request is dropped or fails
    stop, outcomes = threading.Event(), []

    def traffic():
        with requests.Session() as session:
            while not stop.is_set():
                r = session.post(srv.url + "/predict", json={"features": [5.1, 3.5, 1.4, 0.2]}, timeout=60)
                outcomes.append((r.status_code, r.json().get("model_version")))

    clients = [threading.Thread(target=traffic) for _ in range(2)]
    for t in clients:
        t.start()
    time.sleep(0.3)
    reload = srv.post("/model/reload", headers=AUTH)
    time.sleep(0.3)
    stop.set()
    for t in clients:
        t.join(60)
    assert outcomes and all(code == 200 for code, _ in outcomes), outcomes
    assert outcomes[-1][1] == new.version
    assert reload.status_code == 200, reload.text
    body = reload.json()
    assert body["status"] == "reloaded" and body["version"] == new.version
    assert body["previous_version"] == champion.version and body["window_restarted"] is True

    # every worker serves the new version right away, and the window restarted for it
    infos, workers = _reads(srv, "/model/info", 20)
    assert len(workers) == 2 and {i["version"] for i in infos} == {new.version}
    statuses, workers = _reads(srv, "/drift/status", 8)
    assert len(workers) == 2
    n_new = sum(1 for _, version in outcomes if version == new.version)
    for s in statuses:  # the window restarted: only what the new version predicted is in it
        assert s["model_version"] == new.version and s["samples"] == min(n_new, 100)

    # the loop settles: the same shifted traffic no longer alarms against the new reference
    assert srv.post("/drift/reset", headers=AUTH).status_code == 200
    more, _ = shifted_iris(100, seed=12)
    assert srv.post("/predict", json={"instances": [[float(v) for v in r] for r in more]}).status_code == 200
    settled, _ = _reads(srv, "/drift/status", 4)
    for s in settled:
        assert s["samples"] == 100
        assert s["drift_detected"] is False, s
    # feedback is training data: kept across the reload
    assert _feedback_rows(state_dir) == 300


def test_made_up_methods_and_paths_do_not_grow_the_metrics(server):
    """Under gunicorn (multiprocess metrics files): a flood of made-up HTTP methods and paths adds a
    handful of series to serving_http_requests_total, not one per method or path."""
    srv = server["server"]

    def series() -> set[str]:
        text = srv.get("/metrics").text
        return {line.rsplit(" ", 1)[0] for line in text.splitlines() if line.startswith("serving_http_requests_total{")}

    before = series()
    size_before = len(srv.get("/metrics").content)
    with requests.Session() as session:
        for i in range(400):
            method = (
                "X"
                + "".join(chr(65 + (i * 7 + k * 3) % 26) for k in range(8))
                + str(i).translate(str.maketrans("0123456789", "ABCDEFGHIJ"))
            )  # gunicorn takes upper-case tokens as methods
            path = ("/predict", "/health", "/feedback", f"/made-up/{i}")[i % 4]
            resp = session.request(method, srv.url + path, timeout=30)
            assert resp.status_code in (404, 405), (method, path, resp.status_code, resp.text[:200])
    after = series()
    assert len(after - before) <= 4, sorted(after - before)
    assert any('method="other"' in s for s in after) and not any("made-up" in s for s in after)
    assert len(srv.get("/metrics").content) < size_before + 8000  # old code: ~2 KB per made-up method


def _versions_by_worker(srv, reads: int = 24) -> dict[str, set[str]]:
    seen: dict[str, set[str]] = {}
    with ThreadPoolExecutor(4) as pool:
        for resp in pool.map(lambda _: srv.get("/model/info"), range(reads)):
            assert resp.status_code == 200, resp.text
            seen.setdefault(resp.headers["X-Serving-Worker"], set()).add(resp.json()["version"])
    return seen


def _wait_for_workers(srv, old: set[str], new_needed: int, timeout: float = 90.0) -> dict[str, set[str]]:
    """Read /model/info until `new_needed` workers that are not in `old` answered; returns what each
    worker of the last round served."""
    deadline = time.monotonic() + timeout
    fresh: set[str] = set()
    while True:
        seen = _versions_by_worker(srv)
        fresh |= set(seen) - old
        if len(fresh) >= new_needed:
            return seen
        assert time.monotonic() < deadline, f"new workers did not answer: {seen}\n{srv.log_text()[-3000:]}"
        time.sleep(0.5)


def test_restarted_workers_keep_the_served_version_when_the_alias_moves(server, mlflow_server, model_name, state_dir):
    """Moving the alias in MLflow does not change the served model: a worker killed and replaced,
    a graceful restart of all workers (HUP) and a full gunicorn restart all keep serving the recorded
    version (and its window); then the authenticated reload moves every worker to the alias target."""
    import os
    import signal

    srv = server["server"]
    served = srv.get("/model/info").json()["version"]
    assert srv.post("/predict", json={"instances": [[5.1, 3.5, 1.4, 0.2]] * 5}).status_code == 200
    window = srv.get("/drift/status").json()
    X, y = iris_frame()
    moved = log_like_pipeline(mlflow_server, model_name, X, y, random_state=3, run_tag="alias-moved-in-mlflow")
    assert moved.version != served

    workers = set(_versions_by_worker(srv))
    assert len(workers) == 2
    victim = sorted(workers)[0]
    os.kill(int(victim), signal.SIGKILL)  # gunicorn replaces the worker: it starts from the record
    seen = _wait_for_workers(srv, workers, 1)
    assert all(v == {served} for v in seen.values()), seen

    workers = set(seen)
    os.kill(srv.proc.pid, signal.SIGHUP)  # graceful restart: every worker replaced
    seen = _wait_for_workers(srv, workers, 2)
    assert all(v == {served} for v in seen.values()), seen

    stop_gunicorn(srv)
    server["server"] = srv = start_gunicorn(state_dir, model_name, mlflow_server, workers=2)
    seen = _versions_by_worker(srv)
    assert all(v == {served} for v in seen.values()), seen
    health = srv.get("/health").json()
    assert health["status"] == "ok" and health["model_version"] == served
    after = srv.get("/drift/status").json()
    assert after["window_started_at"] == window["window_started_at"] and after["samples"] == window["samples"]

    # only the authenticated reload moves the app to the alias target
    assert srv.post("/model/reload").status_code == 401
    reload = srv.post("/model/reload", headers=AUTH)
    assert reload.status_code == 200, reload.text
    assert reload.json()["version"] == moved.version and reload.json()["previous_version"] == served
    infos, workers = _reads(srv, "/model/info", 12)
    assert len(workers) == 2 and {i["version"] for i in infos} == {moved.version}
