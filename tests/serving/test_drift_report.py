"""The drift window's identity and labels in /drift/status, and the /drift/report page, in-process (Flask test
client) against the real MLflow server: the new status keys, resets, labelled counts after /feedback, the
page's content, escaping, CSP, cache, the collecting state, 503 without a model, and that /predict never
loads matplotlib; the acat default, its statistics computed once per model version, Bonferroni on request,
and a served reference with constant and collinear columns."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import uuid

import numpy as np
import pandas as pd
import pytest

from serving.report import CSP, render_report
from tests.serving.conftest import ADMIN_TOKEN, FEEDBACK_TOKEN, REPO, make_app, shifted_iris
from tests.serving.pipeline_like import IRIS_FEATURES, log_like_pipeline

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
FEEDBACK_AUTH = {"Authorization": f"Bearer {FEEDBACK_TOKEN}"}
SETOSA = [5.1, 3.5, 1.4, 0.2]
NEW_KEYS = (
    "window_epoch",
    "window_resets",
    "window_first_row",
    "window_last_row",
    "labelled_rows",
    "labelled_rows_since_served",
)


@pytest.fixture(scope="module")
def app(mlflow_server, model_name, champion, app_state_dir):
    return make_app(mlflow_server, model_name, app_state_dir)


@pytest.fixture()
def client(app):
    return app.test_client()


def _figures(page: str) -> dict[str, str]:
    """{data-feature (unescaped): the figure's HTML} of a report page."""
    import html

    found = re.findall(r'<figure class="feature-chart[^"]*" data-feature="([^"]*)">(.*?)</figure>', page, re.S)
    return {html.unescape(name): body for name, body in found}


def _send(client, rows) -> None:
    resp = client.post("/predict", json={"instances": [[float(v) for v in r] for r in rows]})
    assert resp.status_code == 200, resp.json


def test_status_names_the_window_its_resets_and_the_labelled_rows(app, client):
    first = client.post("/drift/reset", headers=AUTH)
    assert first.status_code == 200
    resets = first.json["window_resets"]
    assert resets >= 1 and set(first.json) == {"status", "dropped", "model_version", "window_resets"}
    status = client.get("/drift/status").json
    assert all(k in status for k in NEW_KEYS), status
    served = app.extensions["serving"].store.served(app.extensions["serving"].config.model_name)
    assert status["window_epoch"] == served.epoch and status["window_resets"] == resets
    assert status["window_first_row"] is None and status["window_last_row"] is None and status["samples"] == 0

    _send(client, [SETOSA] * 3)
    status = client.get("/drift/status").json
    assert status["samples"] == 3 and status["window_last_row"] - status["window_first_row"] == 2

    again = client.post("/drift/reset", headers=AUTH).json
    assert again["window_resets"] == resets + 1 and again["dropped"] == 3
    cleared = client.get("/drift/status").json
    assert cleared["window_resets"] == resets + 1 and cleared["window_first_row"] is None
    _send(client, [SETOSA])
    fresh = client.get("/drift/status").json
    # a new episode (resets + 1): its ids may start over (SQLite), they grow within it
    assert fresh["window_first_row"] == fresh["window_last_row"] is not None
    _send(client, [SETOSA])
    assert client.get("/drift/status").json["window_last_row"] > fresh["window_last_row"]
    assert fresh["window_epoch"] == status["window_epoch"]

    before = fresh["labelled_rows"], fresh["labelled_rows_since_served"]
    stored = client.post(
        "/feedback", json={"instances": [SETOSA, [6.7, 3.0, 5.2, 2.3]], "labels": [0, 2]}, headers=FEEDBACK_AUTH
    )
    assert stored.status_code == 201
    after = client.get("/drift/status").json
    assert (after["labelled_rows"], after["labelled_rows_since_served"]) == (before[0] + 2, before[1] + 2)
    assert after["labelled_rows_since_served"] <= after["labelled_rows"] == stored.json["total"]


def test_status_costs_one_store_query_more_than_before(app, client, monkeypatch):
    """sync (generation) + the window + the counts: three store calls for /drift/status."""
    store = app.extensions["serving"].store
    calls = []
    for name in ("generation", "served", "window", "window_snapshot", "drift_counts", "count_feedback"):
        method = getattr(store, name)
        monkeypatch.setattr(store, name, lambda *a, _m=method, _n=name, **k: calls.append(_n) or _m(*a, **k))
    assert client.get("/drift/status").status_code == 200
    assert calls == ["generation", "window_snapshot", "drift_counts"]


def test_report_shows_the_status_numbers_per_feature(client, champion):
    client.post("/drift/reset", headers=AUTH)
    rows, _ = shifted_iris(100, seed=3, shift=1.5)
    _send(client, rows)
    status = client.get("/drift/status").json
    resp = client.get("/drift/report")
    assert resp.status_code == 200 and resp.headers["Content-Type"] == "text/html; charset=utf-8"
    assert (
        resp.headers["Content-Security-Policy"] == CSP == "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
    )
    assert resp.headers["X-Report-Cache"] == "miss"
    page = resp.get_data(as_text=True)
    assert page.startswith("<!doctype html>") and "Drift detected" in page
    assert f"{champion.name} v{champion.version}" in page and status["correction"] in page
    assert f"{status['samples']} of a {status['window_size']}-row window" in page
    assert f"{status['window_first_row']}-{status['window_last_row']}" in page
    figures = _figures(page)
    assert list(figures) == IRIS_FEATURES
    for i, name in enumerate(IRIS_FEATURES):
        feature = status["features"][f"feature_{i}"]
        body = figures[name]
        assert body.count("<svg") == 1 and "<script" not in body
        assert f"{feature['ks_stat']:.3f}" in body and f"{feature['p_value']:.3g}" in body
        assert f"{feature['p_adjusted']:.3g}" in body
        assert (">drift<" in body) == feature["drift"]
    assert "petal_length" in status["drifted_features"]
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # nothing to fetch
    assert status["correction"] == "acat"  # the default
    t2 = status["multivariate"]["hotelling_t2"]
    assert f"Combined p-value</dt><dd>{status['combined_p_value']:.3g}<" in page
    assert f"{t2['statistic']:.3g}, p {t2['p_value']:.3g}, {t2['distribution']}" in page
    assert "T² on normal scores" in page and "Mahalanobis distances" in page


def test_reference_statistics_are_computed_once_per_model_version(app, client, monkeypatch):
    """A look uses the statistics the loaded version carries; computing them again would fail here."""
    import serving.drift
    import serving.drift_stats

    def again(*_a, **_k):
        raise AssertionError("reference statistics computed during a request")

    monkeypatch.setattr(serving.drift, "reference_stats", again)
    monkeypatch.setattr(serving.drift_stats, "reference_stats", again)
    client.post("/drift/reset", headers=AUTH)
    rows, _ = shifted_iris(100, seed=4, shift=0.0)
    _send(client, rows)
    active = app.extensions["serving"].manager.active
    before = active.model.reference_stats
    for _ in range(2):
        status = client.get("/drift/status").json
        assert "reason" not in status and "multivariate" in status
    assert app.extensions["serving"].manager.active.model.reference_stats is before


def test_bonferroni_stays_selectable(mlflow_server, model_name, champion, tmp_path):
    c = make_app(mlflow_server, model_name, tmp_path, DRIFT_CORRECTION="bonferroni").test_client()
    rows, _ = shifted_iris(100, seed=5, shift=1.5)
    _send(c, rows)
    status = c.get("/drift/status").json
    assert status["correction"] == "bonferroni" and status["drift_detected"] is True
    assert "multivariate" not in status and "combined_p_value" not in status
    assert status["adjusted_threshold"] == pytest.approx(0.05 / 4)


def test_a_served_reference_with_constant_and_collinear_columns_is_checked(mlflow_server, tmp_path, iris):
    """Degenerate references are data people ship: a constant column (a sensor stuck at its default) and
    a column that is another one doubled. The app loads the version and answers every look (the rules:
    serving/drift_stats.py); moving the constant column is drift."""
    X, y = iris
    frame = X.copy()
    frame["stuck"] = 1.0
    frame["petal_length_x2"] = 2 * frame["petal_length"]
    name = f"degenerate-{uuid.uuid4().hex[:8]}"
    log_like_pipeline(mlflow_server, name, frame, y, with_onnx=False)
    c = make_app(mlflow_server, name, tmp_path).test_client()
    rows = frame.to_numpy()[np.random.default_rng(0).permutation(len(frame))[:100]]  # every class
    _send(c, rows)
    status = c.get("/drift/status").json
    assert status["samples"] == 100 and status["drift_detected"] is False, status
    assert status["multivariate"]["hotelling_t2"]["dimensions"] == 5  # the stuck column takes no part
    assert c.get("/drift/report").status_code == 200
    c.post("/drift/reset", headers=AUTH)
    moved = rows.copy()
    moved[:, 4] = 2.0
    _send(c, moved)
    status = c.get("/drift/status").json
    assert status["drift_detected"] is True and "stuck" in status["drifted_features"]


def test_report_is_cached_per_tested_window(client):
    client.post("/drift/reset", headers=AUTH)
    _send(client, shifted_iris(100, seed=4)[0])
    first = client.get("/drift/report")
    again = client.get("/drift/report")
    assert (first.headers["X-Report-Cache"], again.headers["X-Report-Cache"]) == ("miss", "hit")
    assert again.get_data() == first.get_data()
    _send(client, [SETOSA])  # a new row: another window
    assert client.get("/drift/report").headers["X-Report-Cache"] == "miss"
    client.post("/drift/reset", headers=AUTH)  # an empty window after each reset is another page too
    assert client.get("/drift/report").headers["X-Report-Cache"] == "miss"
    assert client.get("/drift/report").headers["X-Report-Cache"] == "hit"


def test_report_while_collecting_says_so(client):
    client.post("/drift/reset", headers=AUTH)
    empty = client.get("/drift/report")
    assert empty.status_code == 200
    page = empty.get_data(as_text=True)
    assert "Collecting samples (0/100)" in page and "the window is tested once it holds 100 rows" in page
    assert len(_figures(page)) == 4 and "not tested yet" in page
    _send(client, [SETOSA] * 5)
    page = client.get("/drift/report").get_data(as_text=True)
    assert "Collecting samples (5/100)" in page and "window (5 rows)" in page and len(_figures(page)) == 4


def test_report_escapes_the_names_the_model_brings(mlflow_server, tmp_path, iris):
    X, y = iris
    hostile = ['<script>alert("x")</script>', "a&b", "quote\"'", "$x$ petal"]
    name = f"hostile-{uuid.uuid4().hex[:8]}"
    log_like_pipeline(mlflow_server, name, pd.DataFrame(X.to_numpy(), columns=hostile), y, with_onnx=False)
    c = make_app(mlflow_server, name, tmp_path).test_client()
    _send(c, X.to_numpy()[::3])
    resp = c.get("/drift/report")
    assert resp.status_code == 200, resp.get_data(as_text=True)[:500]
    page = resp.get_data(as_text=True)
    assert "<script" not in page and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert list(_figures(page)) == hostile
    assert 'data-feature="quote&quot;&#x27;"' in page and 'data-feature="a&amp;b"' in page


def test_render_report_escapes_the_model_name_too():
    rng = np.random.default_rng(0)
    status = {
        "drift_detected": False,
        "threshold": 0.05,
        "samples": 0,
        "window_size": 100,
        "min_samples": 100,
        "correction": "bonferroni",
        "adjusted_threshold": 0.025,
        "feature_names": ["f<1>", "f2"],
        "reference_samples": 50,
        "features": {},
        "reason": "Collecting samples (0/100)",
        "model_name": "<img src=x onerror=alert(1)>",
        "model_version": "1",
    }
    page = render_report(status, rng.normal(size=(50, 2)), np.empty((0, 2)))
    assert "<img" not in page and "&lt;img src=x onerror=alert(1)&gt; v1" in page
    assert list(_figures(page)) == ["f<1>", "f2"]


def test_report_without_a_model_is_the_status_json_503(mlflow_server, tmp_path):
    c = make_app(mlflow_server, f"nomodel-{uuid.uuid4().hex[:8]}", tmp_path).test_client()
    status, report = c.get("/drift/status"), c.get("/drift/report")
    assert report.status_code == status.status_code == 503
    assert report.mimetype == "application/json" and report.json == status.json
    assert "model not ready" in report.json["error"] and report.headers["Retry-After"] == "5"


def test_predict_never_imports_matplotlib(mlflow_server, model_name, champion, tmp_path):
    """A fresh interpreter: the app starts, predicts and answers /drift/status without matplotlib;
    the first report loads it."""
    script = textwrap.dedent(
        f"""
        import json, sys
        from tests.serving.conftest import make_app
        app = make_app({mlflow_server!r}, {model_name!r}, {str(tmp_path)!r})
        c = app.test_client()
        seen = {{"start": "matplotlib" in sys.modules}}
        assert c.post("/predict", json={{"features": [5.1, 3.5, 1.4, 0.2]}}).status_code == 200
        assert c.post("/predict", json={{"instances": [[5.1, 3.5, 1.4, 0.2]] * 3}}).status_code == 200
        assert c.get("/drift/status").status_code == 200
        seen["predict"] = "matplotlib" in sys.modules
        assert c.get("/drift/report").status_code == 200
        seen["report"] = "matplotlib" in sys.modules
        print(json.dumps(seen))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300, check=False
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"start": False, "predict": False, "report": True}
