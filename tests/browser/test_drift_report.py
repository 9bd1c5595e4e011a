"""GET /drift/report in a real browser (Debian's Chromium, Playwright), served by the app under gunicorn.

The serving app alone is started (against the session's MLflow server, not the whole stack): a model is
registered, 100 rows with a shifted petal length are predicted, and the page is opened. It must render
one chart per feature, log no console error (a CSP violation is one), and make no request but the page
itself (it works offline: inline styles and SVG only).

The screenshot goes to the test's output directory and to ``build/test-output/browser/drift-report.png``;
with ``UPDATE_DOCS_SCREENSHOT=1`` it is also copied to ``docs/img/drift-report.png`` (the README's).

Run: ``.venv/bin/python -m pytest tests/browser/test_drift_report.py -m browser -q -s``.
"""

from __future__ import annotations

import os
import shutil
import uuid

import pytest
import requests

from tests.browser.test_airflow_ui_trigger import CHROMIUM, CHROMIUM_ARGS, SHOTS
from tests.serving.conftest import start_gunicorn, stop_gunicorn
from tests.serving.pipeline_like import IRIS_FEATURES, iris_frame, log_like_pipeline

REPO = SHOTS.parents[2]
DOCS_SHOT = REPO / "docs" / "img" / "drift-report.png"
VIEWPORT = {"width": 1000, "height": 900}

pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(600),
    pytest.mark.skipif(
        not os.path.exists(CHROMIUM),
        reason=f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium); none is downloaded",
    ),
]

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed in this venv")
expect = sync_api.expect


@pytest.fixture(scope="module")
def serving(mlflow_server, tmp_path_factory):
    """gunicorn (one worker) serving a fresh iris model, its window full of shifted rows; yields its URL."""
    from tests.serving.conftest import shifted_iris

    name = f"drift-report-{uuid.uuid4().hex[:8]}"
    X, y = iris_frame()
    log_like_pipeline(mlflow_server, name, X, y, run_tag=f"{name}-v1")
    server = start_gunicorn(tmp_path_factory.mktemp("drift-report-state"), name, mlflow_server, workers=1)
    try:
        rows, _ = shifted_iris(100, seed=21, shift=1.0)
        resp = requests.post(
            server.url + "/predict", json={"instances": [[float(v) for v in r] for r in rows]}, timeout=60
        )
        assert resp.status_code == 200, resp.text
        yield server.url
    finally:
        stop_gunicorn(server)


def test_drift_report_renders_offline_one_chart_per_feature(serving, tmp_path):
    url = serving + "/drift/report"
    status = requests.get(serving + "/drift/status", timeout=30).json()
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport=VIEWPORT)
            page = context.new_page()
            errors: list[str] = []
            requested: list[str] = []
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("request", lambda req: requested.append(req.url))
            response = page.goto(url, wait_until="load")
            assert response is not None and response.status == 200
            expect(page.get_by_role("heading", name="Drift report")).to_be_visible()
            expect(page.locator(".verdict")).to_have_text("Drift detected")
            charts = page.locator("figure.feature-chart")
            expect(charts).to_have_count(len(IRIS_FEATURES))
            assert [charts.nth(i).get_attribute("data-feature") for i in range(len(IRIS_FEATURES))] == IRIS_FEATURES
            for i, feature in enumerate(IRIS_FEATURES):
                chart = charts.nth(i)
                svg = chart.locator("svg")
                expect(svg).to_have_count(1)
                expect(svg).to_be_visible()
                box = svg.bounding_box()
                assert box is not None and box["width"] > 300 and box["height"] > 100, (feature, box)
                drifted = status["features"][f"feature_{i}"]["drift"]
                expect(chart.locator("td.decision")).to_have_text("drift" if drifted else "no drift")
            expect(page.locator("figure.feature-chart.drift")).to_have_count(len(status["drifted_features"]))
            page.wait_for_load_state("networkidle")
            shot = tmp_path / "drift-report.png"
            page.screenshot(path=str(shot), full_page=True)
            context.close()
        finally:
            browser.close()
    assert errors == [], f"console errors: {errors}"
    assert requested == [url], f"the page made requests besides itself: {requested}"
    SHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, SHOTS / "drift-report.png")
    print(f"  screenshot: {shot} and {SHOTS / 'drift-report.png'}", flush=True)
    assert shot.stat().st_size < 400_000
    if os.environ.get("UPDATE_DOCS_SCREENSHOT") == "1":
        DOCS_SHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, DOCS_SHOT)
        print(f"  copied to {DOCS_SHOT}", flush=True)
