"""Serving throughput and latency, same champion, same load, one run: this project's /predict (drift
logging on; SQLite store, and PostgreSQL store on a local server as replicas would use it) against
`mlflow models serve` with the same worker count and against minimal
Flask+gunicorn apps that only predict.

Then faults: 64 connections on the driftloop /predict (every answered prediction must be a stored
window row), and /health probed while 50 slow clients trickle their headers; both with this project's
worker (serving/worker.py) and with gunicorn's plain sync worker, the before/after of issue #11."""

from __future__ import annotations

import os
import sqlite3
import sys
import time
from pathlib import Path

import requests

from bench.load import SlowClients, probe, run_load
from bench.memory import PeakSampler, pids_in_group
from stack.config import REPO_ROOT
from stack.local_postgres import start_local_postgres
from stack.procs import free_port, start_process, stop_group, wait_http_ok

ROW = [5.1, 3.5, 1.4, 0.2]
COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


SQLITE_NAME = "driftloop /predict (drift logging on)"
POSTGRES_NAME = "driftloop /predict (drift logging on, PostgreSQL store)"


def driftloop_spec(
    name: str, mlflow_tracking_uri: str, model_name: str, workers: int, state: Path, extra_env: dict | None = None
) -> dict:
    """The driftloop app under gunicorn as `make run` starts it, on a free port with its own state."""
    path = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"
    port = free_port()
    return {
        "name": name,
        "port": port,
        "path": "/predict",
        "health": "/health",
        "body": {"features": ROW},
        "cmd": [_bin("gunicorn"), "-c", str(REPO_ROOT / "serving" / "gunicorn.conf.py"), "serving.app:create_app()"],
        "state_dir": state / f"serving-{port}",
        "env": {
            "MLFLOW_TRACKING_URI": mlflow_tracking_uri,
            "MODEL_NAME": model_name,
            "PATH": path,
            "GUNICORN_BIND": f"127.0.0.1:{port}",
            "GUNICORN_WORKERS": str(workers),
            "SERVING_STATE_DIR": str(state / f"serving-{port}"),
            "SERVING_ADMIN_TOKEN": "bench",
            "PROMETHEUS_MULTIPROC_DIR": str(state / f"serving-{port}" / "prometheus"),
            **(extra_env or {}),
        },
    }


def server_specs(
    mlflow_tracking_uri: str, model_name: str, workers: int, state: Path, postgres_url: str = ""
) -> list[dict]:
    # `mlflow models serve` execs `uvicorn` by name: the venv's bin directory must be on PATH.
    path = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"
    base_env = {"MLFLOW_TRACKING_URI": mlflow_tracking_uri, "MODEL_NAME": model_name, "PATH": path}
    specs = []
    for name, store_url in ((SQLITE_NAME, ""), (POSTGRES_NAME, postgres_url)):
        if name == POSTGRES_NAME and not store_url:
            continue
        specs.append(
            driftloop_spec(
                name,
                mlflow_tracking_uri,
                model_name,
                workers,
                state,
                {"SERVING_STORE_URL": store_url} if store_url else {},
            )
        )
    port = free_port()
    specs.append(
        {
            "name": f"mlflow models serve --workers {workers}",
            "port": port,
            "path": "/invocations",
            "health": "/ping",
            "body": {"dataframe_split": {"columns": COLUMNS, "data": [ROW]}},
            "cmd": [
                _bin("mlflow"),
                "models",
                "serve",
                "-m",
                f"models:/{model_name}@champion",
                "--env-manager",
                "local",
                "--workers",
                str(workers),
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
            ],
            "env": base_env,
        }
    )
    for engine in ("onnx", "sklearn"):
        port = free_port()
        specs.append(
            {
                "name": f"minimal Flask+gunicorn, {engine} (ceiling)"
                if engine == "onnx"
                else "minimal Flask+gunicorn, sklearn",
                "port": port,
                "path": "/predict",
                "health": "/health",
                "body": {"features": ROW},
                "cmd": [
                    _bin("gunicorn"),
                    "-w",
                    str(workers),
                    "-b",
                    f"127.0.0.1:{port}",
                    "bench.minimal_app:create_app()",
                ],
                "env": {**base_env, "MINIMAL_ENGINE": engine},
            }
        )
    return specs


def bench_serving(
    mlflow_tracking_uri: str,
    model_name: str,
    state: Path,
    duration_s: int = 20,
    connections: int = 16,
    workers: int = 2,
) -> list[dict]:
    results = []
    postgres = start_local_postgres()  # a real server on this machine, as replicas would share one
    try:
        postgres_url = postgres.create_database("serving_bench")
        for spec in server_specs(mlflow_tracking_uri, model_name, workers, state, postgres_url):
            results.append(_bench_one(spec, state, duration_s, connections, workers))
    finally:
        postgres.destroy()
    return results


def _bench_one(spec: dict, state: Path, duration_s: int, connections: int, workers: int) -> dict:
    url = f"http://127.0.0.1:{spec['port']}"
    proc = start_process(spec["cmd"], state / "logs" / f"bench-{spec['port']}.log", env=spec["env"], cwd=REPO_ROOT)
    try:
        wait_http_ok(url + spec["health"], timeout=240, proc=proc)
        check = requests.post(url + spec["path"], json=spec["body"], timeout=30)
        check.raise_for_status()
        with PeakSampler(lambda: pids_in_group(proc.pid)) as memory:
            load = run_load(spec["name"], url + spec["path"], spec["body"], duration_s, connections)
        row = {
            **load.as_dict(),
            "peak_pss_mb": round(memory.peak_mb, 1),
            "workers": workers,
            "connections": connections,
            "duration_s": duration_s,
        }
        if spec["path"] == "/predict" and "driftloop" in spec["name"]:
            row["drift_window_samples_after"] = requests.get(url + "/drift/status", timeout=30).json()["samples"]
        print(
            f"  {spec['name']}: {load.requests_per_s:.0f} req/s, p50 {load.p50_ms:.2f} ms, "
            f"p99 {load.p99_ms:.2f} ms, errors {load.errors}, peak PSS {memory.peak_mb:.0f} MB",
            flush=True,
        )
        return row
    finally:
        stop_group(proc.pid)


def postgres_vs_sqlite(rows: list[dict]) -> float | None:
    """Throughput with the PostgreSQL store as a fraction of the SQLite store's (goal: >= 0.8)."""
    by_name = {r["name"]: r["requests_per_s"] for r in rows}
    if SQLITE_NAME in by_name and POSTGRES_NAME in by_name and by_name[SQLITE_NAME]:
        return by_name[POSTGRES_NAME] / by_name[SQLITE_NAME]
    return None


# the worker classes compared under faults: this project's default and gunicorn's own
WORKER_CLASSES = (
    ("buffering (serving/worker.py, default)", "serving.worker.BufferingSyncWorker"),
    ("gunicorn sync", "sync"),
)


def bench_faults(
    mlflow_tracking_uri: str,
    model_name: str,
    state: Path,
    duration_s: int = 20,
    workers: int = 2,
    connections: int = 64,
    slow: int = 50,
) -> dict:
    """64-connection load and /health under slow clients, for each worker class in WORKER_CLASSES."""
    load, slow_rows = [], []
    for label, worker_class in WORKER_CLASSES:
        load.append(
            load_recorded(mlflow_tracking_uri, model_name, state, label, worker_class, duration_s, connections, workers)
        )
    for label, worker_class in WORKER_CLASSES:
        slow_rows.append(
            health_under_slow_clients(
                mlflow_tracking_uri, model_name, state, label, worker_class, slow, duration_s, workers
            )
        )
    return {"load": load, "slow_clients": slow_rows}


def _window_row_ids(db: Path) -> int:
    """The highest window-row id: rows are only pruned from the old end, so its growth over a run is the
    number of rows recorded (the window itself holds only DRIFT_WINDOW_SIZE of them)."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return conn.execute("SELECT COALESCE(MAX(id), 0) FROM window_rows").fetchone()[0]


def _started(spec: dict, state: Path):
    proc = start_process(spec["cmd"], state / "logs" / f"bench-{spec['port']}.log", env=spec["env"], cwd=REPO_ROOT)
    try:
        wait_http_ok(f"http://127.0.0.1:{spec['port']}{spec['health']}", timeout=240, proc=proc)
    except Exception:
        stop_group(proc.pid)
        raise
    return proc


def load_recorded(
    mlflow_tracking_uri: str,
    model_name: str,
    state: Path,
    label: str,
    worker_class: str,
    duration_s: int = 20,
    connections: int = 64,
    workers: int = 2,
) -> dict:
    """wrk at `connections` connections on POST /predict; answered (2xx) vs window rows recorded."""
    spec = driftloop_spec(
        f"driftloop /predict, {label}",
        mlflow_tracking_uri,
        model_name,
        workers,
        state,
        {"GUNICORN_WORKER_CLASS": worker_class},
    )
    url = f"http://127.0.0.1:{spec['port']}"
    proc = _started(spec, state)
    try:
        requests.post(url + "/predict", json=spec["body"], timeout=30).raise_for_status()
        run_load(spec["name"], url + "/predict", spec["body"], 3, connections, warmup_s=0)  # warm-up
        db = spec["state_dir"] / "serving.sqlite3"
        time.sleep(1.0)  # the requests wrk left in flight when it stopped are still being answered
        before = _window_row_ids(db)
        load = run_load(spec["name"], url + "/predict", spec["body"], duration_s, connections, warmup_s=0)
        time.sleep(1.0)
        recorded = _window_row_ids(db) - before
    finally:
        stop_group(proc.pid)
    row = {
        **load.as_dict(),
        "worker_class": worker_class,
        "connections": connections,
        "workers": workers,
        "duration_s": duration_s,
        "answered": load.requests - load.non_2xx,
        "recorded": recorded,
    }
    print(
        f"  {spec['name']}, {connections} connections: {load.requests_per_s:.0f} req/s, p99 {load.p99_ms:.2f} ms, "
        f"errors {load.errors}, answered {row['answered']}, recorded {recorded}",
        flush=True,
    )
    return row


def health_under_slow_clients(
    mlflow_tracking_uri: str,
    model_name: str,
    state: Path,
    label: str,
    worker_class: str,
    slow: int = 50,
    duration_s: int = 20,
    workers: int = 2,
) -> dict:
    """/health probed every 0.5 s (new connection, 2 s timeout) while `slow` connections send their
    headers a byte every 0.5 s (replaced when the server drops one), default header timeout (10 s)."""
    spec = driftloop_spec(
        f"driftloop, {label}", mlflow_tracking_uri, model_name, workers, state, {"GUNICORN_WORKER_CLASS": worker_class}
    )
    proc = _started(spec, state)
    try:
        with SlowClients("127.0.0.1", spec["port"], n=slow, interval=0.5) as clients:
            time.sleep(1.0)
            result = probe(f"http://127.0.0.1:{spec['port']}/health", duration_s, interval=0.5, timeout=2.0)
            answers, reconnects = dict(clients.answers), clients.reconnects
    finally:
        stop_group(proc.pid)
    row = {
        "name": spec["name"],
        "worker_class": worker_class,
        "slow_connections": slow,
        "duration_s": duration_s,
        "probes": result.probes,
        "ok": result.ok,
        "success_rate": round(result.success_rate, 4),
        "failures": dict(result.failures),
        "slow_answers": answers,
        "slow_reconnects": reconnects,
    }
    print(
        f"  {spec['name']}: /health {result.ok}/{result.probes} within 2 s under {slow} slow connections "
        f"({result.success_rate:.0%}); slow clients answered {answers}",
        flush=True,
    )
    return row
