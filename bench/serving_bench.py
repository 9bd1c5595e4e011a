"""Serving throughput and latency, same champion, same load, one run: this project's /predict (drift
logging on; SQLite store, and PostgreSQL store on a local server as replicas would use it) against `mlflow models serve` with the same worker count and against minimal
Flask+gunicorn apps that only predict."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import requests

from bench.load import run_load
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


def server_specs(mlflow_uri: str, model_name: str, workers: int, state: Path, postgres_url: str = "") -> list[dict]:
    # `mlflow models serve` execs `uvicorn` by name: the venv's bin directory must be on PATH.
    path = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"
    base_env = {"MLFLOW_TRACKING_URI": mlflow_uri, "MODEL_NAME": model_name, "PATH": path}
    specs = []
    for name, store_url in ((SQLITE_NAME, ""), (POSTGRES_NAME, postgres_url)):
        if name == POSTGRES_NAME and not store_url:
            continue
        port = free_port()
        specs.append({
            "name": name, "port": port, "path": "/predict", "health": "/health", "body": {"features": ROW},
            "cmd": [_bin("gunicorn"), "-c", str(REPO_ROOT / "serving" / "gunicorn.conf.py"), "serving.app:create_app()"],
            "env": {**base_env, "GUNICORN_BIND": f"127.0.0.1:{port}", "GUNICORN_WORKERS": str(workers),
                    "SERVING_STATE_DIR": str(state / f"serving-{port}"), "SERVING_ADMIN_TOKEN": "bench",
                    "PROMETHEUS_MULTIPROC_DIR": str(state / f"serving-{port}" / "prometheus"),
                    **({"SERVING_STORE_URL": store_url} if store_url else {})},
        })
    port = free_port()
    specs.append({
        "name": f"mlflow models serve --workers {workers}", "port": port, "path": "/invocations", "health": "/ping",
        "body": {"dataframe_split": {"columns": COLUMNS, "data": [ROW]}},
        "cmd": [_bin("mlflow"), "models", "serve", "-m", f"models:/{model_name}@champion", "--env-manager", "local",
                "--workers", str(workers), "-h", "127.0.0.1", "-p", str(port)],
        "env": base_env,
    })
    for engine in ("onnx", "sklearn"):
        port = free_port()
        specs.append({
            "name": f"minimal Flask+gunicorn, {engine} (ceiling)" if engine == "onnx" else "minimal Flask+gunicorn, sklearn",
            "port": port, "path": "/predict", "health": "/health", "body": {"features": ROW},
            "cmd": [_bin("gunicorn"), "-w", str(workers), "-b", f"127.0.0.1:{port}", "bench.minimal_app:create_app()"],
            "env": {**base_env, "MINIMAL_ENGINE": engine},
        })
    return specs


def bench_serving(mlflow_uri: str, model_name: str, state: Path, duration_s: int = 20, connections: int = 16,
                  workers: int = 2) -> list[dict]:
    results = []
    postgres = start_local_postgres()  # a real server on this machine, as replicas would share one
    try:
        postgres_url = postgres.create_database("serving_bench")
        for spec in server_specs(mlflow_uri, model_name, workers, state, postgres_url):
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
        row = {**load.as_dict(), "peak_rss_mb": round(memory.peak_mb, 1), "workers": workers,
               "connections": connections, "duration_s": duration_s}
        if spec["path"] == "/predict" and "driftloop" in spec["name"]:
            row["drift_window_samples_after"] = requests.get(url + "/drift/status", timeout=30).json()["samples"]
        print(f"  {spec['name']}: {load.requests_per_s:.0f} req/s, p50 {load.p50_ms:.2f} ms, "
              f"p99 {load.p99_ms:.2f} ms, errors {load.errors}, peak RSS {memory.peak_mb:.0f} MB", flush=True)
        return row
    finally:
        stop_group(proc.pid)


def postgres_vs_sqlite(rows: list[dict]) -> float | None:
    """Throughput with the PostgreSQL store as a fraction of the SQLite store's (goal: >= 0.8)."""
    by_name = {r["name"]: r["requests_per_s"] for r in rows}
    if SQLITE_NAME in by_name and POSTGRES_NAME in by_name and by_name[SQLITE_NAME]:
        return by_name[POSTGRES_NAME] / by_name[SQLITE_NAME]
    return None
