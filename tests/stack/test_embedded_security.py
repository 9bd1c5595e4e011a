"""Security of the running embedded stack, probed as someone on the same machine would: what
listens where, what MLflow answers without a login, whether moving the `champion` alias in the
registry changes the served model by itself, and whether labels can be sent without a credential."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
import requests

from tests.stack_fixture import REPO, stack_processes

pytestmark = pytest.mark.stack


def listening_sockets(pids: list[int]) -> set[tuple[str, int, str]]:
    found = set()
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            conns = proc.net_connections(kind="inet")
            name = proc.name()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        for conn in conns:
            if conn.status == psutil.CONN_LISTEN:
                found.add((conn.laddr.ip, conn.laddr.port, name))
    return found


def stack_process_tree(root) -> list[int]:
    """Every process of the stack: the services' process groups (their pid files), the processes that
    carry the stack's marker variable (a process that sets its title, as gunicorn and Airflow do,
    overwrites what /proc shows of its environment, so the marker alone misses them) and all their
    descendants."""
    groups = {int(p.read_text()) for p in (root / "pids").glob("*.pid")}
    pids = set(stack_processes(root))
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) in groups:
                pids.add(proc.pid)
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass
    for pid in list(pids):
        try:
            pids.update(c.pid for c in psutil.Process(pid).children(recursive=True))
        except psutil.NoSuchProcess:
            pass
    return sorted(pids)


def test_only_the_three_services_listen_and_only_on_loopback(embedded_stack):
    env = embedded_stack.env
    sockets = listening_sockets(stack_process_tree(embedded_stack.root))
    assert sockets, "no listening socket found for the stack's processes"
    wrong_host = {s for s in sockets if s[0] != "127.0.0.1"}
    assert not wrong_host, f"listening beyond 127.0.0.1: {sorted(wrong_host)}"
    ports = {port for _, port, _ in sockets}
    expected = {int(env["MLFLOW_PORT"]), int(env["SERVING_PORT"]), int(env["AIRFLOW_PORT"])}
    assert ports == expected, f"listening ports {sorted(sockets)}; expected only {sorted(expected)}"


def test_secret_files_are_private_and_carry_the_credentials(embedded_stack):
    for name in ("secrets.env", "endpoints.env"):
        path = embedded_stack.root / name
        assert oct(path.stat().st_mode & 0o777) == "0o600", name
    endpoints = embedded_stack.endpoints
    for key in (
        "MLFLOW_TRACKING_URI",
        "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD",
        "SERVING_ADMIN_TOKEN",
        "SERVING_FEEDBACK_TOKEN",
        "AIRFLOW_PASSWORD",
    ):
        assert endpoints.get(key), f"{key} missing from endpoints.env"
    assert endpoints["SERVING_FEEDBACK_TOKEN"] != endpoints["SERVING_ADMIN_TOKEN"]
    mlflow_dir = embedded_stack.root / "mlflow"
    ini = (mlflow_dir / "basic_auth.ini").read_text()
    assert endpoints["MLFLOW_TRACKING_PASSWORD"] not in ini, "the MLflow password must not be written to the ini"


def test_mlflow_refuses_anonymous_calls(embedded_stack):
    endpoints = embedded_stack.endpoints
    url = endpoints["MLFLOW_TRACKING_URI"]
    model = "iris-model"
    # health stays open (the stack's and Kubernetes' probes use it)
    assert requests.get(f"{url}/health", timeout=30).status_code == 200
    anonymous = [
        requests.get(f"{url}/api/2.0/mlflow/registered-models/get", params={"name": model}, timeout=30),
        requests.post(
            f"{url}/api/2.0/mlflow/registered-models/alias",
            json={"name": model, "alias": "champion", "version": "1"},
            timeout=30,
        ),
        requests.post(f"{url}/api/2.0/mlflow/registered-models/create", json={"name": "intruder"}, timeout=30),
        requests.get(
            f"{url}/api/2.0/mlflow/registered-models/get",
            params={"name": model},
            timeout=30,
            auth=(endpoints["MLFLOW_TRACKING_USERNAME"], "wrong-password"),
        ),
    ]
    assert [r.status_code for r in anonymous] == [401, 401, 401, 401], [r.text[:200] for r in anonymous]
    ok = requests.get(
        f"{url}/api/2.0/mlflow/registered-models/get",
        params={"name": model},
        timeout=30,
        auth=(endpoints["MLFLOW_TRACKING_USERNAME"], endpoints["MLFLOW_TRACKING_PASSWORD"]),
    )
    assert ok.status_code == 200, ok.text[:300]


def test_a_script_that_sources_endpoints_env_uses_the_mlflow_client_as_it_is(embedded_stack):
    script = (
        "set -a; . {env}; set +a; {py} -c 'from mlflow import MlflowClient; "
        'v = MlflowClient().get_model_version_by_alias("iris-model", "champion"); '
        'print("champion", v.version)\''
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW")}
    proc = subprocess.run(
        ["bash", "-c", script.format(env=embedded_stack.root / "endpoints.env", py=sys.executable)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "champion" in proc.stdout


def _served_version(serving: str) -> str:
    return str(requests.get(f"{serving}/model/info", timeout=30).json().get("version"))


def _worker_pids(master: int) -> set[int]:
    return {c.pid for c in psutil.Process(master).children()}


def test_moving_the_alias_does_not_change_the_served_model_until_a_deploy(embedded_stack):
    from mlflow import MlflowClient

    endpoints = embedded_stack.endpoints
    serving = endpoints["SERVING_URL"]
    admin = {"Authorization": f"Bearer {endpoints['SERVING_ADMIN_TOKEN']}"}
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
    os.environ["MLFLOW_TRACKING_USERNAME"] = endpoints["MLFLOW_TRACKING_USERNAME"]
    os.environ["MLFLOW_TRACKING_PASSWORD"] = endpoints["MLFLOW_TRACKING_PASSWORD"]
    client = MlflowClient(tracking_uri=endpoints["MLFLOW_TRACKING_URI"], registry_uri=endpoints["MLFLOW_TRACKING_URI"])
    champion = client.get_model_version_by_alias("iris-model", "champion")
    served_before = _served_version(serving)
    assert served_before == str(champion.version)
    # another version with the same artifacts: someone with registry access moves the alias to it
    other = client.create_model_version("iris-model", f"models:/iris-model/{champion.version}")
    try:
        client.set_registered_model_alias("iris-model", "champion", other.version)
        master = int((embedded_stack.root / "pids" / "serving.pid").read_text())
        before = _worker_pids(master)
        os.kill(master, signal.SIGHUP)  # gunicorn replaces every worker
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            now = _worker_pids(master)
            try:  # a new worker answers only once its app is created (the model loaded): no answer yet is normal
                if now and not (now & before) and requests.get(f"{serving}/health", timeout=10).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.5)
        assert not (_worker_pids(master) & before), "gunicorn did not replace its workers"
        for _ in range(10):  # whichever worker answers
            assert _served_version(serving) == served_before

        reload = requests.post(f"{serving}/model/reload", headers=admin, timeout=120)
        assert reload.status_code == 200, reload.text[:300]
        assert _served_version(serving) == str(other.version)
    finally:
        client.set_registered_model_alias("iris-model", "champion", champion.version)
        requests.post(f"{serving}/model/reload", headers=admin, timeout=120)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    assert _served_version(serving) == str(champion.version)


def test_feedback_needs_its_own_token(embedded_stack):
    endpoints = embedded_stack.endpoints
    serving = endpoints["SERVING_URL"]
    body = {"instances": [[5.1, 3.5, 1.4, 0.2]], "labels": [0]}
    anonymous = requests.post(f"{serving}/feedback", json=body, timeout=30)
    assert anonymous.status_code == 401, anonymous.text[:200]
    assert "error" in anonymous.json()
    ok = requests.post(
        f"{serving}/feedback",
        json=body,
        timeout=30,
        headers={"Authorization": f"Bearer {endpoints['SERVING_FEEDBACK_TOKEN']}"},
    )
    assert ok.status_code == 201, ok.text[:200]
    export = requests.get(
        f"{serving}/feedback/export",
        timeout=30,
        headers={"Authorization": f"Bearer {endpoints['SERVING_FEEDBACK_TOKEN']}"},
    )
    assert export.status_code in (401, 403), "the labelling token must not export the training data"
