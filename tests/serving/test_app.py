"""The app in-process (Flask test client) against the real MLflow server: endpoints, bad input,
feedback export, admin auth, backends, load failures and the no-champion start."""

from __future__ import annotations

import calendar
import csv
import io
import json
import time
import uuid

import pytest

from serving.model import MlflowModelLoader
from tests.serving.conftest import ADMIN_TOKEN, FEEDBACK_TOKEN, make_app
from tests.serving.pipeline_like import IRIS_FEATURES, log_like_pipeline, set_champion

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
FEEDBACK_AUTH = {"Authorization": f"Bearer {FEEDBACK_TOKEN}"}
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
    # the other worker follows the shared record on its next request, without a reload call of its own;
    # a probe does not wait for that load (it runs in the background), a request of the API does
    followed = other_worker.get("/health")
    assert followed.json["following"] or followed.json["model_version"] == "1", followed.json
    assert followed.status_code == 200 or followed.json["reason"] == "loading the served version", followed.json
    assert other_worker.get("/drift/status").json["samples"] == 1
    assert other_worker.get("/health").json["model_version"] == "1"
    time.sleep(0.6)
    retried = _settled_health(patient)
    assert retried.status_code == 200 and retried.json["model_version"] == "1"


def _settled_health(client, timeout: float = 60):
    """/health once no background follow of the served record is running (what a probe sees next)."""
    deadline = time.monotonic() + timeout
    while True:
        health = client.get("/health")
        if not health.json["following"] or time.monotonic() > deadline:
            return health
        time.sleep(0.05)


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
    assert one.json == {
        "model_name": champion.name,
        "model_version": champion.version,
        "backend": "onnx",
        "prediction": 0,
    }
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
    (
        "body over limit",
        dict(data=json.dumps({"instances": [SETOSA] * 40, "pad": "x" * 5000}), content_type="application/json"),
        413,
        "",
    ),
    ("not an object", dict(json=[SETOSA]), 400, "JSON object"),
]


@pytest.mark.parametrize("what, kwargs, status, fragment", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_input_gets_a_json_4xx_and_changes_nothing(app, client, what, kwargs, status, fragment):
    before = (_window_max_id(app), _feedback_count(app))
    for path in ("/predict", "/feedback"):
        resp = client.post(path, headers=FEEDBACK_AUTH if path == "/feedback" else None, **kwargs)
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

    def boom(**_):
        raise RuntimeError("kaput")

    monkeypatch.setattr(app.extensions["serving"].manager, "sync", boom)
    err = client.get("/health")
    assert err.status_code == 500 and err.mimetype == "application/json"
    assert "RuntimeError" in err.json["error"] and "<html" not in err.get_data(as_text=True).lower()


def test_feedback_and_export(app, client):
    start = _feedback_count(app)
    one = client.post("/feedback", json={"features": SETOSA, "label": 0}, headers=FEEDBACK_AUTH)
    assert one.status_code == 201 and one.json["rows"] == 1
    many = client.post(
        "/feedback",
        json={"instances": [[6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]], "labels": [2, 1]},
        headers=FEEDBACK_AUTH,
    )
    assert many.status_code == 201 and many.json["rows"] == 2 and many.json["total"] == start + 3
    window_before = _window_max_id(app)
    export = client.get("/feedback/export", headers=AUTH)
    assert export.status_code == 200 and export.mimetype == "text/csv"
    rows = list(csv.reader(io.StringIO(export.get_data(as_text=True))))
    assert rows[0] == IRIS_FEATURES + ["target"]
    assert rows[-3:] == [
        ["5.1", "3.5", "1.4", "0.2", "0"],
        ["6.7", "3.0", "5.2", "2.3", "2"],
        ["5.9", "3.0", "4.2", "1.5", "1"],
    ]
    assert export.headers["X-Feedback-Rows"] == str(len(rows) - 1)
    assert _window_max_id(app) == window_before  # feedback is training data, not drift input


def test_drift_status_reset_and_metrics(app, client, champion):
    client.post("/drift/reset", headers=AUTH)
    status = client.get("/drift/status").json
    assert status["samples"] == 0 and status["reason"] == "Collecting samples (0/100)"
    assert status["model_version"] == champion.version and status["correction"] == "acat"
    client.post("/predict", json={"instances": [SETOSA] * 3})
    assert client.get("/drift/status").json["samples"] == 3
    reset = client.post("/drift/reset", headers=AUTH)
    assert reset.status_code == 200
    assert reset.json == {
        "status": "reset",
        "dropped": 3,
        "model_version": champion.version,
        "window_resets": reset.json["window_resets"],
    }
    assert reset.json["window_resets"] >= 2  # this test reset twice
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


# -- issue 9: labels need a credential ------------------------------------------------------------


def test_feedback_needs_a_credential(app, client, monkeypatch):
    """POST /feedback wants SERVING_FEEDBACK_TOKEN (or the admin token) as a bearer token; the request
    goes through the WSGI fast path in front of Flask like any other; tokens are compared with
    hmac.compare_digest (constant time) and the feedback token opens no admin endpoint."""
    from serving import http
    from serving.fastpath import PredictFastPath

    assert isinstance(app.wsgi_app, PredictFastPath)  # the test client calls the whole WSGI stack
    before = _feedback_count(app)
    body = {"features": SETOSA, "label": 0}
    missing = client.post("/feedback", json=body)
    assert missing.status_code == 401 and missing.mimetype == "application/json"
    assert "SERVING_FEEDBACK_TOKEN" in missing.json["error"]
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    for header in (
        "Bearer nope",
        f"Basic {FEEDBACK_TOKEN}",
        "Bearer",
        f"Bearer {FEEDBACK_TOKEN}x",
        f"bearer {FEEDBACK_TOKEN[:-1]}",
    ):
        wrong = client.post("/feedback", json=body, headers={"Authorization": header})
        assert wrong.status_code == 401, header
        assert wrong.headers["WWW-Authenticate"].startswith("Bearer") and wrong.json["error"]
    # auth comes before the body is read: an anonymous caller learns nothing about the input rules
    assert client.post("/feedback", data="{oops", content_type="application/json").status_code == 401
    assert _feedback_count(app) == before

    compared = []
    real = http.hmac.compare_digest

    def spy(a, b):
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(http.hmac, "compare_digest", spy)
    ok = client.post("/feedback", json=body, headers=FEEDBACK_AUTH)
    assert ok.status_code == 201 and ok.json["rows"] == 1
    assert len(compared) == 2  # both configured tokens compared, each in constant time
    as_admin = client.post("/feedback", json=body, headers=AUTH)
    assert as_admin.status_code == 201
    assert _feedback_count(app) == before + 2
    # the labelling service's token is not an admin token
    for method, path in (("post", "/drift/reset"), ("post", "/model/reload"), ("get", "/feedback/export")):
        assert getattr(client, method)(path, headers=FEEDBACK_AUTH).status_code == 401


def test_feedback_disabled_without_its_token(mlflow_server, model_name, champion, tmp_path):
    """No SERVING_FEEDBACK_TOKEN: POST /feedback refuses (403 JSON naming the variable), also with the
    admin token; nothing is stored; never a 500."""
    app = make_app(mlflow_server, model_name, tmp_path, SERVING_FEEDBACK_TOKEN="")
    c = app.test_client()
    for headers in (None, AUTH, {"Authorization": "Bearer anything"}):
        resp = c.post("/feedback", json={"features": SETOSA, "label": 0}, headers=headers)
        assert resp.status_code == 403 and resp.mimetype == "application/json"
        assert "SERVING_FEEDBACK_TOKEN" in resp.json["error"]
    assert _feedback_count(app) == 0


def test_feedback_token_settings_are_checked():
    from serving.config import ConfigError, ServingConfig

    with pytest.raises(ConfigError, match="must differ"):
        ServingConfig.from_env({"SERVING_ADMIN_TOKEN": "same", "SERVING_FEEDBACK_TOKEN": "same"}, environ={})
    with pytest.raises(ConfigError, match="SERVING_FEEDBACK_TOKEN"):
        ServingConfig.from_env({"SERVING_FEEDBACK_TOKEN": "with space"}, environ={})
    cfg = ServingConfig.from_env({}, environ={"SERVING_FEEDBACK_TOKEN": "fb-token"})
    assert cfg.feedback_token == "fb-token" and cfg.admin_token == ""


def test_store_url_setting_picks_the_backend_and_rejects_others_without_echoing_a_password():
    from serving.config import ConfigError, ServingConfig

    assert (
        ServingConfig.from_env({}, environ={"SERVING_STATE_DIR": "/s"}).resolved_store_url
        == "sqlite:////s/serving.sqlite3"
    )
    url = "postgresql://serving:pw@db.mlops:5432/serving"
    assert ServingConfig.from_env({"SERVING_STORE_URL": url}, environ={}).resolved_store_url == url
    with pytest.raises(ConfigError, match="SERVING_STORE_URL") as err:
        ServingConfig.from_env({"SERVING_STORE_URL": "redis://u:topsecret@cache:6379/0"}, environ={})
    assert "topsecret" not in str(err.value)


def test_feedback_provenance_is_stored_and_exported(app, client):
    start = _feedback_count(app)
    t0 = time.time()
    a = client.post(
        "/feedback", json={"features": SETOSA, "label": 0, "source": "labeller-7 batch:2026/01"}, headers=FEEDBACK_AUTH
    )
    b = client.post(
        "/feedback",
        json={"instances": [[6.7, 3.0, 5.2, 2.3]], "labels": [2]},
        headers=AUTH,
        environ_base={"REMOTE_ADDR": "10.1.2.3"},
    )
    assert a.status_code == 201 and b.status_code == 201
    for bad in ("", "=HYPERLINK(1)", "-x", "a\nb", "tab\there", "x" * 65, "ünïcode", 5, None, ["a"]):
        resp = client.post("/feedback", json={"features": SETOSA, "label": 0, "source": bad}, headers=FEEDBACK_AUTH)
        assert resp.status_code == 400 and "source" in resp.json["error"], bad
    assert _feedback_count(app) == start + 2

    # the default export keeps the columns the pipeline's load_data reads
    plain = client.get("/feedback/export", headers=AUTH)
    table = list(csv.reader(io.StringIO(plain.get_data(as_text=True))))
    assert table[0] == IRIS_FEATURES + ["target"] and all(len(r) == 5 for r in table)
    assert client.get("/feedback/export?provenance=false", headers=AUTH).get_data() == plain.get_data()

    full = client.get("/feedback/export?provenance=true", headers=AUTH)
    assert full.status_code == 200 and full.mimetype == "text/csv"
    table = list(csv.reader(io.StringIO(full.get_data(as_text=True))))
    assert table[0] == IRIS_FEATURES + ["target", "received_at", "credential", "client_addr", "source", "model_version"]
    first, second = table[-2], table[-1]
    assert first[:5] == ["5.1", "3.5", "1.4", "0.2", "0"]
    assert first[6:9] == ["feedback", "127.0.0.1", "labeller-7 batch:2026/01"]
    assert second[4:5] == ["2"] and second[6:9] == ["admin", "10.1.2.3", ""]
    for row in (first, second):
        received = calendar.timegm(time.strptime(row[5], "%Y-%m-%dT%H:%M:%SZ"))
        assert row[5].endswith("Z") and t0 - 2 <= received <= time.time() + 2  # UTC
        assert row[9] == app.extensions["serving"].manager.active.model.version
    bad = client.get("/feedback/export?provenance=maybe", headers=AUTH)
    assert bad.status_code == 400 and "provenance" in bad.json["error"]
    misspelt = client.get("/feedback/export?provenence=true", headers=AUTH)
    assert misspelt.status_code == 400 and "provenence" in misspelt.json["error"]


# -- issue 9: metric labels are bounded ----------------------------------------------------------


def _request_series(text: str) -> set[str]:
    return {line.rsplit(" ", 1)[0] for line in text.splitlines() if line.startswith("serving_http_requests_total{")}


def test_metric_labels_stay_bounded(client):
    """Made-up methods and paths do not create series: unknown methods count as "other", unknown
    paths (404) and unknown methods on known paths (405) as endpoint "<unmatched>"."""
    before = _request_series(client.get("/metrics").get_data(as_text=True))
    for i in range(300):
        method = f"X{uuid.uuid4().hex[:10].upper()}"
        path = ("/predict", "/health", "/feedback", f"/made-up/{i}", f"/{uuid.uuid4().hex}")[i % 5]
        resp = client.open(path, method=method)
        assert resp.status_code in (404, 405) and resp.mimetype == "application/json", (method, path)
        client.get(f"/no/such/path/{i}")
    after = _request_series(client.get("/metrics").get_data(as_text=True))
    new = after - before
    assert len(new) <= 6, sorted(new)  # other|GET x <unmatched>|/metrics x 404|405|200
    assert any('method="other"' in s for s in after)
    assert not any("made-up" in s or 'method="X' in s for s in after)
    assert all('endpoint="<unmatched>"' in s or 'endpoint="/metrics"' in s for s in new), sorted(new)


# -- issue 9: the registry decides nothing by itself ----------------------------------------------


def test_a_restarted_worker_serves_the_recorded_version_not_the_alias(mlflow_server, tmp_path, iris):
    """Moving the alias in MLflow changes nothing until an admin reload: a worker that starts (or
    restarts) on an existing state serves the served record's version, with the same window."""
    name = f"record-{uuid.uuid4().hex[:8]}"
    X, y = iris
    v1 = log_like_pipeline(mlflow_server, name, X, y, run_tag="v1")
    first = make_app(mlflow_server, name, tmp_path).test_client()  # first start ever: adopts the champion
    assert first.get("/model/info").json["version"] == v1.version
    assert first.post("/predict", json={"instances": [SETOSA] * 3}).status_code == 200
    window = first.get("/drift/status").json

    v2 = log_like_pipeline(mlflow_server, name, X, y, random_state=7, run_tag="v2")  # moves the alias
    restarted = make_app(mlflow_server, name, tmp_path).test_client()
    info = restarted.get("/model/info").json
    assert info["version"] == v1.version and info["run_id"] == v1.run_id
    health = restarted.get("/health").json
    assert health["status"] == "ok" and health["model_version"] == v1.version
    status = restarted.get("/drift/status").json  # the window did not restart either
    assert status["samples"] == 3 and status["window_started_at"] == window["window_started_at"]
    assert first.post("/predict", json={"features": SETOSA}).json["model_version"] == v1.version

    # only the authenticated reload moves the app (every worker) to the alias target
    assert restarted.post("/model/reload").status_code == 401
    moved = restarted.post("/model/reload", headers=AUTH)
    assert moved.status_code == 200 and moved.json["version"] == v2.version and moved.json["changed"] is True
    assert first.post("/predict", json={"features": SETOSA}).json["model_version"] == v2.version
    assert make_app(mlflow_server, name, tmp_path).test_client().get("/model/info").json["version"] == v2.version


def test_health_does_not_wait_for_a_worker_to_follow_a_reload_elsewhere(
    mlflow_server, model_name, champion, iris, tmp_path
):
    """A reload on one worker (or replica) makes every other worker load the new version on its next
    request. A readiness probe must not be that request: /health answers at once with the model the
    worker has (`following: true`), the load runs in the background, and the next prediction is
    answered by the new version."""
    import threading

    other = make_app(mlflow_server, model_name, tmp_path)  # a worker of the same app, another process
    app = make_app(mlflow_server, model_name, tmp_path)
    manager = app.extensions["serving"].manager
    release = threading.Event()
    real_load = manager.loader.load

    def slow_load(version=None):
        assert release.wait(60), "the test never released the load"
        return real_load(version)

    manager.loader.load = slow_load
    X, y = iris
    v2 = log_like_pipeline(mlflow_server, model_name, X, y, random_state=3, run_tag="v2")
    assert other.test_client().post("/model/reload", headers=AUTH).json["version"] == v2.version

    c = app.test_client()
    t0 = time.monotonic()
    health = c.get("/health")
    assert time.monotonic() - t0 < 5  # the load is held until `release`: /health did not wait for it
    assert health.status_code == 200 and health.json["following"] is True, health.json
    assert health.json["model_version"] == champion.version and health.json["status"] == "ok"
    release.set()
    assert c.post("/predict", json={"features": SETOSA}).json["model_version"] == v2.version
    health = c.get("/health").json
    assert health["following"] is False and health["model_version"] == v2.version


def test_unloadable_recorded_version_is_reported_not_replaced_by_the_alias(
    mlflow_server, model_name, champion, tmp_path
):
    """The recorded version cannot be loaded: the worker says so in /health and /model/info, does not
    switch to the champion by itself, retries every SERVING_LOAD_RETRY_SECONDS; an admin reload moves it."""
    from serving.store import SQLiteStore

    SQLiteStore(tmp_path / "serving.sqlite3", 100).activate(model_name, "999", None)  # e.g. deleted in MLflow
    app = make_app(mlflow_server, model_name, tmp_path, SERVING_LOAD_RETRY_SECONDS="0.5")
    manager = app.extensions["serving"].manager
    attempts = []
    real_load = manager.loader.load

    def counting_load(version=None):
        attempts.append(version)
        return real_load(version)

    manager.loader.load = counting_load
    c = app.test_client()
    health = c.get("/health")
    assert health.status_code == 503 and health.json["status"] == "not ready"
    for text in (health.json["reason"], health.json["load_error"]["message"]):
        assert "served version 999" in text and "POST /model/reload" in text
    assert health.json["load_error"]["version"] == "999"
    info = c.get("/model/info")
    assert info.status_code == 503 and "served version 999" in info.json["error"]
    assert c.post("/predict", json={"features": SETOSA}).status_code == 503
    assert attempts == []  # within the retry interval: no new attempt per request
    time.sleep(0.6)
    assert c.get("/health").status_code == 503  # the probe retries in the background, without waiting
    deadline = time.monotonic() + 30
    while manager.following and time.monotonic() < deadline:
        time.sleep(0.05)
    assert attempts == ["999"]  # retried the recorded version, not the alias
    assert app.extensions["serving"].store.served(model_name).version == "999"

    reloaded = c.post("/model/reload", headers=AUTH)
    assert reloaded.status_code == 200 and reloaded.json["version"] != "999"
    assert c.get("/health").json["status"] == "ok"
    assert c.get("/model/info").json["version"] == reloaded.json["version"]
