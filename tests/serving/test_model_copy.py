"""Serving keeps a local copy of each version it loads, so that MLflow being down costs no predictions.

The copy is written on every load from MLflow, verified by its digests, and used only when MLflow
cannot be reached (the registry stays the source of truth when it answers). A worker started during
an outage serves the recorded version from it, /health says so and returns to "ok" by itself when
MLflow is back; a reload that failed during the outage is settled by itself once the alias still
points at the served version. A damaged copy is never served.

The gunicorn test stops and restarts an MLflow server of its own (the session's is shared).
"""

from __future__ import annotations

import json
import os
import signal
import stat
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests

from serving.model import LOCAL_COPY, REGISTRY, MlflowModelLoader, ModelLoadError, load_copy
from serving.model_cache import MANIFEST, CopyUnusable, ModelCopies
from stack.mlflow_server import start_mlflow
from stack.procs import free_port, stop_group
from tests.serving.conftest import ADMIN_TOKEN, make_app, start_gunicorn, stop_gunicorn
from tests.serving.pipeline_like import iris_frame, log_like_pipeline, set_champion

pytestmark = pytest.mark.faults

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
SETOSA = [5.1, 3.5, 1.4, 0.2]
ROWS = np.array([SETOSA, [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]])
DOWN = "http://127.0.0.1:9"  # nothing listens there: MLflow "down" for in-process apps


@pytest.fixture
def fast_failing_mlflow_client(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- the copy itself ---------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["onnx", "sklearn"])
def test_a_loaded_version_leaves_a_private_verified_copy(
    mlflow_server, model_name, champion, tmp_path, backend, fast_failing_mlflow_client
):
    copies = ModelCopies(tmp_path / "models")
    loaded = MlflowModelLoader(mlflow_server, model_name, backend=backend, copies=copies).load(champion.version)
    assert loaded.source == REGISTRY and loaded.backend == backend
    copy_dir = copies.dir_for(model_name, champion.version)
    manifest = json.loads((copy_dir / MANIFEST).read_text())
    assert manifest["version"] == champion.version and manifest["run_id"] == champion.run_id
    assert manifest["backend"] == backend and manifest["feature_names"] == list(loaded.feature_names)
    assert ("model.onnx" in manifest["files"]) == (backend == "onnx")
    for path in [copy_dir, *copy_dir.rglob("*")]:
        assert _mode(path) == (0o700 if path.is_dir() else 0o600), path
    assert _mode(tmp_path / "models") == 0o700
    assert [p.name for p in copy_dir.parent.iterdir()] == [champion.version]  # no temporary directory left

    # MLflow unreachable: the same version, rebuilt from the copy, predicts the same
    offline = MlflowModelLoader(DOWN, model_name, backend=backend, copies=copies).load(champion.version)
    assert offline.source == LOCAL_COPY and offline.copy_saved_at == manifest["saved_at"]
    assert (offline.version, offline.run_id, offline.backend) == (loaded.version, loaded.run_id, loaded.backend)
    assert offline.predict(ROWS) == loaded.predict(ROWS)
    assert np.array_equal(offline.reference, loaded.reference)


def _tamper_model(copy_dir: Path) -> None:
    target = copy_dir / "model.onnx"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))


def _drop_reference(copy_dir: Path) -> None:
    (copy_dir / "reference.csv").unlink()


def _add_file(copy_dir: Path) -> None:
    (copy_dir / "extra.pkl").write_bytes(b"not listed in the manifest")


def _edit_reference(copy_dir: Path) -> None:
    with open(copy_dir / "reference.csv", "a") as fh:
        fh.write("9,9,9,9\n")


def _other_version(copy_dir: Path) -> None:
    manifest = json.loads((copy_dir / MANIFEST).read_text())
    manifest["version"] = "999"
    (copy_dir / MANIFEST).write_text(json.dumps(manifest))


def _truncated_manifest(copy_dir: Path) -> None:
    text = (copy_dir / MANIFEST).read_text()
    (copy_dir / MANIFEST).write_text(text[: len(text) // 2])


TAMPERING = {
    "model bytes": (_tamper_model, "model.onnx does not match its sha256"),
    "missing file": (_drop_reference, "missing ['reference.csv']"),
    "extra file": (_add_file, "unexpected ['extra.pkl']"),
    "edited reference": (_edit_reference, "reference.csv does not match its sha256"),
    "another version": (_other_version, "not"),
    "truncated manifest": (_truncated_manifest, "no readable manifest.json"),
}


@pytest.mark.parametrize("tampering", sorted(TAMPERING))
def test_a_damaged_copy_is_never_served(
    mlflow_server, model_name, champion, tmp_path, tampering, fast_failing_mlflow_client
):
    copies = ModelCopies(tmp_path / "models")
    MlflowModelLoader(mlflow_server, model_name, copies=copies).load(champion.version)
    damage, fragment = TAMPERING[tampering]
    damage(copies.dir_for(model_name, champion.version))
    with pytest.raises(CopyUnusable) as caught:
        load_copy(copies, model_name, champion.version, "champion")
    assert fragment in str(caught.value)
    with pytest.raises(ModelLoadError) as failed:  # MLflow down and the copy damaged: no model, and why
        MlflowModelLoader(DOWN, model_name, copies=copies).load(champion.version)
    assert failed.value.kind == "unavailable" and "local copy is not usable" in failed.value.message

    # MLflow answers: the registry serves and the damaged copy is replaced by a good one
    again = MlflowModelLoader(mlflow_server, model_name, copies=copies).load(champion.version)
    assert again.source == REGISTRY
    assert load_copy(copies, model_name, champion.version, "champion").source == LOCAL_COPY


def test_the_registry_is_asked_first_and_copies_are_pruned(mlflow_server, tmp_path, iris, fast_failing_mlflow_client):
    name = f"prune-{uuid.uuid4().hex[:8]}"
    X, y = iris
    copies = ModelCopies(tmp_path / "models", keep=2)
    loader = MlflowModelLoader(mlflow_server, name, copies=copies)
    versions = [log_like_pipeline(mlflow_server, name, X, y, random_state=i, run_tag=f"v{i}").version for i in range(3)]
    for v in versions:
        assert loader.load(v).source == REGISTRY  # MLflow answers: never the copy
        time.sleep(0.05)
    kept = sorted(p.name for p in copies.dir_for(name, "1").parent.iterdir())
    assert kept == versions[1:]  # the two most recently used
    assert loader.load(None).version == versions[-1]  # the alias, from the registry
    with pytest.raises(ModelLoadError) as caught:  # no version known: no copy is guessed
        MlflowModelLoader(DOWN, name, copies=copies).load(None)
    assert caught.value.kind == "unavailable"


def test_a_worker_started_while_mlflow_is_down_serves_the_copy(
    mlflow_server, model_name, champion, tmp_path, fast_failing_mlflow_client
):
    """In-process: the app's first start loaded from MLflow and left the copy; a second app on the
    same state (a restarted worker) with MLflow unreachable serves the recorded version from it; with
    a damaged copy it serves nothing and says why."""
    first = make_app(mlflow_server, model_name, tmp_path).test_client()
    assert first.get("/health").json["model_source"] == REGISTRY
    started = time.monotonic()
    offline = make_app(DOWN, model_name, tmp_path, SERVING_LOAD_RETRY_SECONDS="30").test_client()
    print(f"start with MLflow down, from the copy: {time.monotonic() - started:.2f} s")
    health = offline.get("/health")
    assert health.status_code == 200 and health.json["status"] == "degraded"
    assert health.json["model_source"] == LOCAL_COPY and health.json["model_version"] == champion.version
    assert f"MLflow at {DOWN} is unreachable" in health.json["reason"]
    assert f"version {champion.version} is served from its local copy" in health.json["reason"]
    pred = offline.post("/predict", json={"features": SETOSA})
    assert pred.status_code == 200 and pred.json["model_version"] == champion.version
    assert offline.get("/model/info").json["source"] == LOCAL_COPY

    _tamper_model(ModelCopies(tmp_path / "models").dir_for(model_name, champion.version))
    broken = make_app(DOWN, model_name, tmp_path, SERVING_LOAD_RETRY_SECONDS="30").test_client()
    health = broken.get("/health")
    assert health.status_code == 503 and health.json["status"] == "not ready"
    assert "local copy is not usable" in health.json["reason"] and "sha256" in health.json["reason"]
    assert broken.post("/predict", json={"features": SETOSA}).status_code == 503


def _wait_health(client, predicate, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while True:
        body = client.get("/health").json
        if predicate(body):
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.2)


def test_a_failed_reload_settles_by_itself_only_when_the_alias_still_points_at_the_served_version(
    mlflow_server, tmp_path, iris, monkeypatch, fast_failing_mlflow_client
):
    name = f"settle-{uuid.uuid4().hex[:8]}"
    X, y = iris
    v1 = log_like_pipeline(mlflow_server, name, X, y, run_tag="v1")
    app = make_app(mlflow_server, name, tmp_path, SERVING_LOAD_RETRY_SECONDS="1")
    client, manager = app.test_client(), app.extensions["serving"].manager
    real_loader = manager.loader
    monkeypatch.setattr(manager, "loader", MlflowModelLoader(DOWN, name, copies=real_loader.copies))
    failed = client.post("/model/reload", headers=AUTH)  # MLflow down: clean 503, the model keeps serving
    assert failed.status_code == 503 and failed.json["kind"] == "unavailable"
    health = client.get("/health").json
    assert health["status"] == "degraded" and health["last_reload"]["ok"] is False

    v2 = log_like_pipeline(mlflow_server, name, X, y, random_state=5, run_tag="v2")  # the alias moved meanwhile
    monkeypatch.setattr(manager, "loader", real_loader)  # MLflow is back
    health = _wait_health(client, lambda b: "points at version" in (b.get("reason") or ""))
    assert health["status"] == "degraded" and health["model_version"] == v1.version
    assert f"alias 'champion' points at version {v2.version} while version {v1.version} is served" in health["reason"]
    assert "POST /model/reload" in health["reason"]

    set_champion(mlflow_server, name, v1.version)  # the alias back at the served version: nothing to do
    health = _wait_health(client, lambda b: b["status"] == "ok")
    assert health["last_reload"]["ok"] is True and "settled without a reload" in health["last_reload"]["message"]
    assert "reason" not in health and health["model_version"] == v1.version


# -- a real gunicorn and an MLflow server that goes down and comes back -------------------------------


class OwnMlflow:
    def __init__(self, state: Path, port: int):
        self.state, self.port, self.proc = state, port, None
        self.url = f"http://127.0.0.1:{port}"

    def start(self) -> float:
        t0 = time.monotonic()
        self.proc, url = start_mlflow(self.state, self.port)
        assert url == self.url
        return time.monotonic() - t0

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc.pid)
            self.proc = None


@pytest.fixture(scope="module")
def own_mlflow(tmp_path_factory):
    server = OwnMlflow(tmp_path_factory.mktemp("own-mlflow"), free_port())
    server.start()
    yield server
    server.stop()


def _answers(srv, n: int = 8) -> list[tuple[int, str, dict]]:
    """n predictions, 4 at a time so that every worker answers some."""

    def one(_):
        r = srv.post("/predict", json={"features": SETOSA})
        return r.status_code, r.headers.get("X-Serving-Worker", ""), r.json()

    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(one, range(n)))


def _healths(srv, n: int = 8) -> dict[str, dict]:
    """The latest /health body of each worker that answered (4 requests at a time)."""
    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda _: srv.get("/health"), range(n)))
    return {r.headers["X-Serving-Worker"]: r.json() for r in responses}


def test_mlflow_down_a_respawned_worker_serves_the_copy_and_health_heals_by_itself(own_mlflow, tmp_path):
    name = f"outage-{uuid.uuid4().hex[:8]}"
    X, y = iris_frame()
    v1 = log_like_pipeline(own_mlflow.url, name, X, y, run_tag="v1")
    srv = start_gunicorn(
        tmp_path,
        name,
        own_mlflow.url,
        workers=2,
        extra_env={"SERVING_LOAD_RETRY_SECONDS": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "3"},
    )
    try:
        assert {h["model_source"] for h in _healths(srv).values()} == {REGISTRY}
        assert ModelCopies(tmp_path / "models").open(name, v1.version) is not None

        own_mlflow.stop()
        assert all(code == 200 for code, _, _ in _answers(srv))  # the loaded models keep answering
        failed = srv.admin("/model/reload")  # a reload fails cleanly
        assert failed.status_code == 503 and failed.headers["Content-Type"].startswith("application/json")
        assert failed.json()["kind"] == "unavailable" and "previous model keeps serving" in failed.json()["error"]

        # a worker dies during the outage: its replacement serves the recorded version from the copy
        old_workers = set(_healths(srv))
        victim = sorted(old_workers)[0]
        killed_at = time.monotonic()
        os.kill(int(victim), signal.SIGKILL)
        deadline = time.monotonic() + 60
        fresh: dict = {}
        while not fresh:
            assert time.monotonic() < deadline, srv.log_text()[-3000:]
            try:
                fresh = {pid: body for pid, body in _healths(srv, 4).items() if pid not in old_workers}
            except requests.RequestException:
                pass
            time.sleep(0.1)
        print(f"respawned worker answered {time.monotonic() - killed_at:.1f} s after the kill, MLflow down")
        ((pid, body),) = fresh.items()
        assert body["status"] == "degraded" and body["model_source"] == LOCAL_COPY, body
        assert body["model_version"] == v1.version and "is unreachable" in body["reason"]
        answers = _answers(srv, 20)
        assert all(code == 200 and b["model_version"] == v1.version for code, _, b in answers), answers
        assert pid in {worker for _, worker, _ in answers}  # the new worker answered predictions too

        # MLflow comes back: every worker returns to "ok" by itself, no admin call
        restart = own_mlflow.start()
        back_at = time.monotonic()
        deadline = back_at + 60
        while True:
            healths = _healths(srv)
            if len(healths) == 2 and all(h["status"] == "ok" for h in healths.values()):
                break
            assert time.monotonic() < deadline, healths
            time.sleep(0.5)
        print(
            f"MLflow restarted in {restart:.1f} s; /health ok on every worker {time.monotonic() - back_at:.1f} s later"
        )
        for body in healths.values():
            assert body["model_source"] == REGISTRY and body["model_version"] == v1.version
            assert body["last_reload"]["ok"] is True and "settled without a reload" in body["last_reload"]["message"]
    finally:
        stop_gunicorn(srv)
        if own_mlflow.proc is None:
            own_mlflow.start()
