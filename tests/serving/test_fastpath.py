"""The WSGI fast path of POST /predict (serving/fastpath.py) answers exactly as the Flask view does,
and hands every other request, and every failing one, to Flask without side effects of its own."""

from __future__ import annotations

import pytest
from werkzeug.test import Client, EnvironBuilder

from serving import metrics
from serving.fastpath import PredictFastPath
from tests.serving.conftest import make_app

SETOSA = [5.1, 3.5, 1.4, 0.2]


@pytest.fixture(scope="module")
def app(mlflow_server, model_name, champion, app_state_dir):
    return make_app(mlflow_server, model_name, app_state_dir, SERVING_MAX_BATCH="50", SERVING_MAX_BODY_BYTES="4096")


def _window_max_id(app) -> int:
    store = app.extensions["serving"].store
    return store.conn.execute("SELECT COALESCE(MAX(id), 0) FROM window_rows").fetchone()[0]


def _count(counter, *labels) -> float:
    return counter.labels(*labels)._value.get()


def _flask_only(app) -> Client:
    assert isinstance(app.wsgi_app, PredictFastPath)
    return Client(app.wsgi_app.flask_wsgi)  # the Flask app without the fast path in front


@pytest.mark.parametrize("body", [{"features": SETOSA}, {"instances": [SETOSA, [6.7, 3.0, 5.2, 2.3]]}])
def test_same_answer_as_the_flask_view(app, body):
    fast, flask = app.test_client(), _flask_only(app)
    start = _window_max_id(app)
    ok_before = _count(metrics.REQUESTS, "POST", "/predict", "200")
    a = fast.post("/predict", json=body)
    b = flask.post("/predict", json=body)
    assert a.status_code == b.status_code == 200
    assert a.get_data() == b.get_data()
    assert sorted(a.headers.items()) == sorted(b.headers.items())
    rows = len(body.get("instances", [None]))
    assert _window_max_id(app) == start + 2 * rows  # each answer entered the window once
    assert _count(metrics.REQUESTS, "POST", "/predict", "200") == ok_before + 2


def test_invalid_input_is_answered_by_flask_once(app):
    c = app.test_client()
    start = _window_max_id(app)
    errors_before = _count(metrics.INPUT_ERRORS, "/predict")
    bad_before = _count(metrics.REQUESTS, "POST", "/predict", "400")
    resp = c.post("/predict", json={"features": [1.0, 2.0, 3.0]})
    assert resp.status_code == 400 and resp.json == {"error": "features has 3 values, the model expects 4"}
    assert _count(metrics.INPUT_ERRORS, "/predict") == errors_before + 1
    assert _count(metrics.REQUESTS, "POST", "/predict", "400") == bad_before + 1
    assert _window_max_id(app) == start


def test_unusual_requests_go_to_flask_with_their_body(app):
    c = app.test_client()
    start = _window_max_id(app)
    # no Content-Length (a chunked upload, as gunicorn passes it on): Flask reads the stream itself
    environ = EnvironBuilder("/predict", method="POST", json={"features": SETOSA}).get_environ()
    del environ["CONTENT_LENGTH"]
    environ["wsgi.input_terminated"] = True
    chunked = c.open(environ)
    assert chunked.status_code == 200 and chunked.json["prediction"] == 0
    assert c.post("/predict?x=1", json={"features": SETOSA}).json["prediction"] == 0
    assert c.post("/predict/", json={"features": SETOSA}).status_code == 404
    assert c.put("/predict", json={"features": SETOSA}).status_code == 405
    assert _window_max_id(app) == start + 2


def test_a_failing_model_gets_the_json_500_and_no_window_row(app, monkeypatch):
    c = app.test_client()
    start = _window_max_id(app)
    predictor = app.extensions["serving"].manager.active.model.predictor
    calls = []

    def broken(X):
        calls.append(len(X))
        raise RuntimeError("kaput")

    monkeypatch.setattr(predictor, "predict", broken)
    resp = c.post("/predict", json={"features": SETOSA})
    assert resp.status_code == 500 and resp.mimetype == "application/json"
    assert "RuntimeError" in resp.json["error"]
    assert calls == [1, 1]  # tried on the fast path, then answered (and logged) by the Flask view
    assert _window_max_id(app) == start


def test_feedback_is_never_answered_by_the_fast_path(app):
    """POST /feedback goes through the fast path's WSGI layer to Flask, where it needs its credential."""
    from tests.serving.conftest import FEEDBACK_TOKEN

    c = app.test_client()
    store = app.extensions["serving"].store
    before = store.count_feedback(app.extensions["serving"].config.model_name)
    for path in ("/feedback", "/feedback/"):
        resp = c.post(path, json={"features": SETOSA, "label": 0})
        assert resp.status_code == (401 if path == "/feedback" else 404), (path, resp.status_code)
    assert store.count_feedback(app.extensions["serving"].config.model_name) == before
    ok = c.post(
        "/feedback", json={"features": SETOSA, "label": 0}, headers={"Authorization": f"Bearer {FEEDBACK_TOKEN}"}
    )
    assert ok.status_code == 201
