"""End to end: dag.test() of drift_retrain against a real MLflow server, the real serving app (gunicorn,
2 workers) and the local backend running the real compiled pipeline with kfp_components.run_local.

1. bootstrap: the real pipeline registers a first champion (deploy_target=none), the app serves it;
2. in-distribution traffic fills the drift window -> dag.test(): no drift, nothing submitted;
3. shifted traffic -> dag.test(): drift, exactly one pipeline run, a new champion, the app serves it.

Each real pipeline run takes one to two minutes on the 2-core machine (five steps, each a fresh Python
process importing mlflow and sklearn), so this module runs only with DRIFT_RETRAIN_E2E=1:

    DRIFT_RETRAIN_E2E=1 .venv/bin/python -m pytest tests/dags/test_drift_retrain_e2e.py -q
"""

from __future__ import annotations

import csv
import os
import random
import secrets
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from dag_runs import local_runs, parse_dag
from dag_runs import task_states as _states
from kfp_test_fixtures import REPO, free_port, local_conn, set_conn

pytestmark = [
    pytest.mark.skipif(
        os.environ.get("DRIFT_RETRAIN_E2E") != "1",
        reason="several minutes on this machine: set DRIFT_RETRAIN_E2E=1 (make e2e covers the loop too)",
    ),
    pytest.mark.skipif(
        not (REPO / "serving" / "app.py").exists() or not (REPO / "kfp_components" / "run_local.py").exists(),
        reason="needs serving/app.py and kfp_components/run_local.py",
    ),
]

SHIFTED = [7.1, 5.5, 3.4, 2.2]  # the seed's e2e drift sample


def _http(method: str, url: str, body: dict | None = None, token: str | None = None) -> tuple[int, dict]:
    import requests

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    resp = requests.request(method, url, json=body, headers=headers, timeout=60)
    return resp.status_code, (resp.json() if resp.content else {})


def _iris_rows(n: int, seed: int = 3) -> list[list[float]]:
    with open(REPO / "kfp_components" / "data" / "iris.csv") as fh:
        rows = list(csv.DictReader(fh))
    features = [k for k in rows[0] if k != "target"]
    random.Random(seed).shuffle(rows)
    return [[float(r[f]) for f in features] for r in rows[:n]]


@pytest.fixture(scope="module")
def e2e_stack(mlflow_server, tmp_path_factory):
    from stack.procs import start_process, stop_group

    root = tmp_path_factory.mktemp("e2e")
    model = f"e2e-{uuid.uuid4().hex[:8]}"
    token = secrets.token_urlsafe(16)
    env = {"MLFLOW_TRACKING_URI": mlflow_server, "SERVING_ADMIN_TOKEN": token}

    boot = subprocess.run(
        [
            sys.executable,
            "-m",
            "kfp_components.run_local",
            "--pipeline-root",
            str(root / "boot"),
            "--param",
            f"mlflow_tracking_uri={mlflow_server}",
            "--param",
            f"model_name={model}",
            "--param",
            "deploy_target=none",
            "--param",
            "run_tag=e2e-bootstrap",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, **env},
        cwd=root,
    )
    assert boot.returncode == 0, boot.stdout[-3000:] + boot.stderr[-3000:]

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    serving = start_process(
        [
            str(Path(sys.executable).with_name("gunicorn")),
            "-c",
            str(REPO / "serving" / "gunicorn.conf.py"),
            "serving.app:create_app()",
        ],
        root / "serving.log",
        env={
            **env,
            "MODEL_NAME": model,
            "SERVING_STATE_DIR": str(root / "serving"),
            "GUNICORN_WORKERS": "2",
            "GUNICORN_BIND": f"127.0.0.1:{port}",
            "DRIFT_WINDOW_SIZE": "100",
        },
        cwd=REPO,
    )
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if _http("GET", f"{url}/health")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(1)
        else:
            pytest.fail(f"serving app not healthy: {(root / 'serving.log').read_text()[-3000:]}")
        yield {"url": url, "model": model, "token": token, "root": root, "mlflow": mlflow_server}
    finally:
        stop_group(serving.pid)


@pytest.fixture
def e2e_env(e2e_stack, airflow_db, monkeypatch):
    monkeypatch.setenv("SERVING_ADMIN_TOKEN", e2e_stack["token"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", e2e_stack["mlflow"])
    monkeypatch.setenv("KFP_LOCAL_PIPELINE_ROOT", str(e2e_stack["root"] / "kfp-local"))
    set_conn(monkeypatch, "serving_default", e2e_stack["url"])
    set_conn(
        monkeypatch,
        "kfp_default",
        local_conn(e2e_stack["root"] / "kfp-runs", runner=[sys.executable, "-m", "kfp_components.run_local"]),
    )
    return e2e_stack


@pytest.fixture(scope="module")
def e2e_dag():
    return parse_dag(DRIFT_RETRAIN_POLL_INTERVAL="2")  # read when the DAG file is parsed


def _runs(stack) -> list[dict]:
    return local_runs(stack["root"] / "kfp-runs")


def test_no_drift_then_drift(e2e_env, e2e_dag):
    url, model = e2e_env["url"], e2e_env["model"]
    status, info = _http("GET", f"{url}/model/info")
    assert status == 200 and info["name"] == model
    old_version = int(info["version"])

    # 2. in-distribution traffic: no drift, nothing submitted
    _http("POST", f"{url}/drift/reset", {}, token=e2e_env["token"])
    status, _ = _http("POST", f"{url}/predict", {"instances": _iris_rows(100)})
    assert status == 200
    status, drift = _http("GET", f"{url}/drift/status")
    assert drift["drift_detected"] is False and drift["samples"] == 100, drift
    dr = e2e_dag.test(run_conf={"model_name": model})
    assert _states(dr)["check_drift"] == "skipped" and _states(dr)["submit_retrain"] == "skipped", _states(dr)
    assert _runs(e2e_env) == []

    # 3. shifted traffic: drift, one pipeline run, a new champion served
    for _ in range(100):
        assert _http("POST", f"{url}/predict", {"features": SHIFTED})[0] == 200
    assert _http("GET", f"{url}/drift/status")[1]["drift_detected"] is True
    dr = e2e_dag.test(run_conf={"model_name": model})
    states = _states(dr)
    assert states == {
        "check_params": "success",
        "check_drift": "success",
        "drift_event": "skipped",
        "capture_drift_report": "success",
        "force_retrain": "skipped",
        "submit_retrain": "success",
        "confirm_champion": "success",
    }, states
    runs = _runs(e2e_env)
    assert len(runs) == 1 and runs[0]["state"] == "SUCCEEDED", runs
    result = dr.get_task_instance("confirm_champion").xcom_pull(task_ids="confirm_champion")
    assert result["decision"] == "accepted" and int(result["served_version"]) > old_version, result
    status, info = _http("GET", f"{url}/model/info")
    assert int(info["version"]) == int(result["served_version"])

    from mlflow.tracking import MlflowClient

    client = MlflowClient(e2e_env["mlflow"])
    champion = client.get_model_version_by_alias(model, "champion")
    assert champion.version == result["registered_version"]
    # the drift report that started the retrain is stored with the candidate's run, and linked
    html = Path(client.download_artifacts(champion.run_id, "drift/report.html", str(e2e_env["root"]))).read_text()
    assert html.count('<figure class="feature-chart') == 4 and "Drift detected" in html, html[:500]
    submit = dr.get_task_instance("submit_retrain")
    assert submit.xcom_pull(task_ids="submit_retrain", key="drift_report_url").endswith(
        f"/runs/{champion.run_id}/artifactPath/drift/report.html"
    )
