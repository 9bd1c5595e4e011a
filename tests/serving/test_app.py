"""The app in-process (Flask test client) against the real MLflow server: endpoints, bad input,
feedback export, admin auth, backends, load failures and the no-champion start."""
from __future__ import annotations

import csv
import io
import json
import time
import uuid

import pytest

from serving.model import MlflowModelLoader
from tests.serving.conftest import ADMIN_TOKEN, make_app
from tests.serving.pipeline_like import IRIS_FEATURES, log_like_pipeline, set_champion

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
SETOSA = [5.1, 3.5, 1.4, 0.2]


@pytest.fixture(scope="module")
def app(mlflow_server, model_name, champion, app_state_dir):
    return make_app(mlflow_server, model_name, app_state_dir, SERVING_MAX_BATCH="50", SERVING_MAX_BODY_BYTES="4096")


@pytest.fixture()
def client(app):
    return app.test_client()


def _window_max_id(app) -> int:
    store = app.extensions["serving"].store
    return store.conn.execute("SELECT COALESCE(MAX(id), 0) FROM window_rows").fetchone()[0]


def _feedback_count(app) -> int:
    return app.extensions["serving"].store.count_feedback(app.extensions["serving"].config.model_name)


def test_no_champion_at_start_then_reload(mlflow_server, tmp_path, iris):
    name = f"nochamp-{uuid.uuid4().hex[:8]}"
    app = make_app(mlflow_server, name, tmp_path)
    other_worker = make_app(mlflow_server, name, tmp_path).test_client()  # a second worker, same store
    # an app of its own (own store) that nobody reloads: it retries the champion on requests
    patient = make_app(mlflow_server, name, tmp_path / "patient", SERVING_LOAD_RETRY_SECONDS="0.5").test_client()
    c = app.test_client()
    health = c.get("/health")
    assert health.status_code == 503
    assert health.json["ready"] is False and health.json["status"] == "not ready"
    assert "champion" in health.json["reason"]
    pred = c.post("/predict", json={"features": SETOSA})
    assert pred.status_code == 503 and "model not ready" in pred.json["error"] and "champion" in pred.json["error"]
    assert c.get("/model/info").status_code == 503
    assert c.get("/drift/status").status_code == 503
    assert c.get("/health/live").status_code == 200
    assert c.get("/openapi.json").status_code == 200
    failed = c.post("/model/reload", headers=AUTH)
    assert failed.status_code == 409 and "champion" in failed.json["error"]

    X, y = iris
    log_like_pipeline(mlflow_server, name, X, y, run_tag="first")
    reloaded = c.post("/model/reload", headers=AUTH)
    assert reloaded.status_code == 200, reloaded.json
    assert reloaded.json["status"] == "reloaded" and reloaded.json["version"] == "1"
    assert reloaded.json["previous_version"] is None and reloaded.json["window_restarted"] is True
    assert c.get("/health").json["status"] == "ok"
    assert c.post("/predict", json={"features": SETOSA}).json["prediction"] == 0
    # the other worker follows the shared record on its next request, without a reload call of its own
    followed = other_worker.get("/health")
    assert followed.status_code == 200 and followed.json["model_version"] == "1"
    assert other_worker.get("/drift/status").json["samples"] == 1
    time.sleep(0.6)
    retried = patient.get("/health")
    assert retried.status_code == 200 and retried.json["model_version"] == "1"


def test_health_and_model_info(client, champion):
    health = client.get("/health")
    assert health.status_code == 200
    assert health.json["status"] == "ok" and health.json["ready"] is True
    assert health.json["model_version"] == champion.version and health.json["backend"] == "onnx"
    info = client.get("/model/info").json
    assert info["name"] == champion.name and info["version"] == champion.version
    assert info["alias"] == "champion" and info["run_id"] == champion.run_id
    assert info["feature_names"] == IRIS_FEATURES and info["backend"] == "onnx"
    assert info["loaded_at"].endswith("Z") and info["reference_samples"] == 120


def test_predict_one_row_and_a_batch(client, champion):
    one = client.post("/predict", json={"features": SETOSA})
    assert one.status_code == 200
    assert one.json == {"model_name": champion.name, "model_version": champion.version, "backend": "onnx",
                        "prediction": 0}
    batch = client.post("/predict", json={"instances": [SETOSA, [6.7, 3.0, 5.2, 2.3]]})
    assert batch.status_code == 200
    assert batch.json["predictions"] == [0, 2] and batch.json["count"] == 2


BAD_REQUESTS = [
    ("malformed JSON", dict(data="{oops", content_type="application/json"), 400, "malformed JSON"),
    ("wrong content type", dict(data=json.dumps({"features": SETOSA}), content_type="text/plain"), 415, "Content-Type"),
    ("form body", dict(data={"features": "1"}), 415, "Content-Type"),
    ("missing features", dict(json={"feature": SETOSA}), 400, "unknown field"),
    ("empty object", dict(json={}), 400, "missing field"),
    ("wrong count", dict(json={"features": [1.0, 2.0, 3.0]}), 400, "the model expects 4"),
    ("string value", dict(json={"features": [1.0, 2.0, 3.0, "4"]}), 400, "got string"),
    ("boolean value", dict(json={"features": [1.0, 2.0, 3.0, True]}), 400, "got boolean"),
    ("null value", dict(json={"features": [1.0, 2.0, 3.0, None]}), 400, "got null"),
    ("NaN", dict(data='{"features": [NaN, 1, 2, 3]}', content_type="application/json"), 400, "NaN"),
    ("Infinity", dict(data='{"features": [1, -Infinity, 2, 3]}', content_type="application/json"), 400, "Infinity"),
    ("overflow", dict(data='{"features": [1e400, 1, 2, 3]}', content_type="application/json"), 400, "finite"),
    ("nested list", dict(json={"features": [[1.0, 2.0, 3.0, 4.0]]}), 400, "got array"),
    ("features not a list", dict(json={"features": 5}), 400, "must be an array"),
    ("empty batch", dict(json={"instances": []}), 400, "empty"),
    ("ragged batch", dict(json={"instances": [SETOSA, [1.0]]}), 400, "instances[1]"),
    ("batch over limit", dict(json={"instances": [SETOSA] * 51}), 400, "limit is 50"),
    ("body over limit", dict(data=json.dumps({"instances": [SETOSA] * 40, "pad": "x" * 5000}),
                             content_type="application/json"), 413, ""),
    ("not an object", dict(json=[SETOSA]), 400, "JSON object"),
]


@pytest.mark.parametrize("what, kwargs, status, fragment", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_input_gets_a_json_4xx_and_changes_nothing(app, client, what, kwargs, status, fragment):
    before = (_window_max_id(app), _feedback_count(app))
    for path in ("/predict", "/feedback"):
        resp = client.post(path, **kwargs)
        assert resp.status_code == status, (path, resp.status_code, resp.data[:300])
        assert resp.mimetype == "application/json"
        assert fragment in resp.json["error"], resp.json
    assert (_window_max_id(app), _feedback_count(app)) == before
    assert client.get("/health").status_code == 200


def test_admin_endpoints_need_the_token(app, client):
    before = (_window_max_id(app), _feedback_count(app))
    for method, path in (("post", "/drift/reset"), ("post", "/model/reload"), ("get", "/feedback/export")):
        call = getattr(client, method)
        missing = call(path)
        assert missing.status_code == 401 and "admin token required" in missing.json["error"]
        assert missing.headers["WWW-Authenticate"].startswith("Bearer")
        wrong = call(path, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json["error"] == "invalid admin token"
        basic = call(path, headers={"Authorization": f"Basic {ADMIN_TOKEN}"})
        assert basic.status_code == 401
    assert (_window_max_id(app), _feedback_count(app)) == before


def test_admin_disabled_without_a_token(mlflow_server, model_name, champion, tmp_path):
    app = make_app(mlflow_server, model_name, tmp_path, SERVING_ADMIN_TOKEN="")
    resp = app.test_client().post("/model/reload", headers={"Authorization": "Bearer anything"})
    assert resp.status_code == 403 and "SERVING_ADMIN_TOKEN" in resp.json["error"]


def test_errors_are_json(app, client, monkeypatch):
    nf = client.get("/nope")
    assert nf.status_code == 404 and nf.mimetype == "application/json" and nf.json["error"]
    na = client.get("/predict")
    assert na.status_code == 405 and na.mimetype == "application/json" and "POST" in na.headers["Allow"]

    def boom():
        raise RuntimeError("kaput")

    monkeypatch.setattr(app.extensions["serving"].manager, "sync", boom)
    err = client.get("/health")
    assert err.status_code == 500 and err.mimetype == "application/json"
    assert "RuntimeError" in err.json["error"] and "<html" not in err.get_data(as_text=True).lower()


def test_feedback_and_export(app, client):
    start = _feedback_count(app)
    one = client.post("/feedback", json={"features": SETOSA, "label": 0})
    assert one.status_code == 201 and one.json["rows"] == 1
    many = client.post("/feedback", json={"instances": [[6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]], "labels": [2, 1]})
    assert many.status_code == 201 and many.json["rows"] == 2 and many.json["total"] == start + 3
    window_before = _window_max_id(app)
    export = client.get("/feedback/export", headers=AUTH)
    assert export.status_code == 200 and export.mimetype == "text/csv"
    rows = list(csv.reader(io.StringIO(export.get_data(as_text=True))))
    assert rows[0] == IRIS_FEATURES + ["target"]
    assert rows[-3:] == [["5.1", "3.5", "1.4", "0.2", "0"], ["6.7", "3.0", "5.2", "2.3", "2"],
                         ["5.9", "3.0", "4.2", "1.5", "1"]]
    assert export.headers["X-Feedback-Rows"] == str(len(rows) - 1)
    assert _window_max_id(app) == window_before  # feedback is training data, not drift input


def test_drift_status_reset_and_metrics(app, client, champion):
    client.post("/drift/reset", headers=AUTH)
    status = client.get("/drift/status").json
    assert status["samples"] == 0 and status["reason"] == "Collecting samples (0/100)"
    assert status["model_version"] == champion.version and status["correction"] == "bonferroni"
    client.post("/predict", json={"instances": [SETOSA] * 3})
    assert client.get("/drift/status").json["samples"] == 3
    reset = client.post("/drift/reset", headers=AUTH)
    assert reset.status_code == 200 and reset.json == {"status": "reset", "dropped": 3, "model_version": champion.version}
    text = client.get("/metrics").get_data(as_text=True)
    assert "serving_http_requests_total" in text and "serving_predicted_rows_total" in text
    assert 'endpoint="/predict"' in text


def test_sklearn_backend_then_broken_champion_keeps_serving(mlflow_server, app, client, model_name, champion, iris):
    X, y = iris
    v2 = log_like_pipeline(mlflow_server, model_name, X, y, with_onnx=False, run_tag="no-onnx")
    reload = client.post("/model/reload", headers=AUTH)
    assert reload.status_code == 200, reload.json
    assert reload.json["version"] == v2.version and reload.json["backend"] == "sklearn"
    assert reload.json["previous_version"] == champion.version and reload.json["changed"] is True
    info = client.get("/model/info").json
    assert info["backend"] == "sklearn" and "onnx_parity" in info["backend_note"]
    assert client.post("/predict", json={"instances": [SETOSA, [6.7, 3.0, 5.2, 2.3]]}).json["predictions"] == [0, 2]

    # a champion without its drift reference cannot be served: the old model stays
    broken = log_like_pipeline(mlflow_server, model_name, X, y, skip_reference=True, run_tag="broken")
    failed = client.post("/model/reload", headers=AUTH)
    assert failed.status_code == 409, failed.json
    assert "reference.csv" in failed.json["error"] and failed.json["version"] == broken.version
    health = client.get("/health").json
    assert health["status"] == "degraded" and health["ready"] is True and health["model_version"] == v2.version
    assert health["last_reload"]["ok"] is False and "reference.csv" in health["last_reload"]["message"]
    info = client.get("/model/info").json
    assert info["version"] == v2.version and info["last_reload"]["ok"] is False
    assert client.post("/predict", json={"features": SETOSA}).json["model_version"] == v2.version

    # back to the first champion: healthy again
    set_champion(mlflow_server, model_name, champion.version)
    ok = client.post("/model/reload", headers=AUTH)
    assert ok.status_code == 200 and ok.json["version"] == champion.version and ok.json["backend"] == "onnx"
    assert client.get("/health").json["status"] == "ok"


def test_unreachable_mlflow_answers_503_and_keeps_the_model(app, client, champion, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    manager = app.extensions["serving"].manager
    monkeypatch.setattr(manager, "loader", MlflowModelLoader("http://127.0.0.1:9", manager.name))
    resp = client.post("/model/reload", headers=AUTH)
    assert resp.status_code == 503 and "not reachable" in resp.json["error"]
    assert client.post("/predict", json={"features": SETOSA}).json["model_version"] == champion.version
