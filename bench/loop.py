"""Loop latency: one retrain pipeline on the local runner split by step, DAG file parse time, and the
time from a forced DAG trigger (Airflow REST API), and from drift through the asset event, to the new
champion being served, on a whole embedded stack started for the benchmark (whose peak memory is
sampled meanwhile)."""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import requests

from bench.memory import PeakSampler, stack_pids
from stack.config import REPO_ROOT, read_env_file
from stack.procs import free_port

TASK_LINE = re.compile(
    r"^(\d\d:\d\d:\d\d\.\d+) - INFO - (?:Executing task|Task) '([\w-]+)'(?: finished with status (\w+))?"
)
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def step_durations(output: str) -> dict[str, float]:
    """Per-task wall time from the local runner's log lines ('Executing task X' … 'Task X finished')."""
    started, durations = {}, {}
    for line in output.splitlines():
        match = TASK_LINE.match(ANSI.sub("", line))
        if not match:
            continue
        stamp = datetime.strptime(match.group(1), "%H:%M:%S.%f")
        if match.group(3) is None:
            started[match.group(2)] = stamp
        elif match.group(2) in started:
            durations[match.group(2)] = round((stamp - started[match.group(2)]).total_seconds(), 2)
    return durations


def pipeline_run(mlflow_tracking_uri: str, model_name: str, root: Path) -> dict:
    t0 = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "kfp_components.run_local",
            "--pipeline-root",
            str(root),
            "--param",
            f"mlflow_tracking_uri={mlflow_tracking_uri}",
            "--param",
            f"model_name={model_name}",
            "--param",
            "deploy_target=none",
            "--param",
            "min_accuracy=0.0",
        ],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
    )
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"pipeline run failed: {proc.stdout[-2000:]}")
    return {"wall_s": round(wall, 1), "steps_s": step_durations(proc.stdout)}


def import_cost(module: str, repeats: int = 3) -> float:
    """Median seconds to import `module` in a fresh interpreter (what each component process pays)."""
    code = f"import time; t=time.perf_counter(); import {module}; print(time.perf_counter()-t)"
    times = [
        float(
            subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip().splitlines()[-1]
        )
        for _ in range(repeats)
    ]
    return round(statistics.median(times), 2)


def dag_parse_time(repeats: int = 5) -> dict:
    """Seconds to execute dags/drift_retrain.py in a fresh interpreter with airflow.sdk already imported
    (what the dag-processor pays per parse)."""
    code = (
        "import runpy, time, airflow.sdk\n"
        "t = time.perf_counter(); runpy.run_path('dags/drift_retrain.py'); print(time.perf_counter() - t)"
    )
    times = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT)
        times.append(float(out.stdout.strip().splitlines()[-1]))
    return {"median_s": round(statistics.median(times), 3), "max_s": round(max(times), 3), "repeats": repeats}


def drift_event_loop(endpoints: dict[str, str], airflow: Any) -> float:
    """Seconds from the last of 100 shifted rows (after labelling the shifted region) until the serving
    app serves the champion the asset-triggered run registered: the event path of `make e2e`."""
    from stack.e2e import post_feedback, send_shifted, wait_newer_champion

    serving = endpoints["SERVING_URL"]
    before = int(requests.get(f"{serving}/model/info", timeout=30).json()["version"])
    airflow.wait_unpaused_idle()
    admin = {"Authorization": f"Bearer {endpoints['SERVING_ADMIN_TOKEN']}"}
    requests.post(f"{serving}/drift/reset", headers=admin, timeout=30).raise_for_status()
    post_feedback(serving, {"Authorization": f"Bearer {endpoints['SERVING_FEEDBACK_TOKEN']}"})
    send_shifted(serving)
    t0 = time.monotonic()
    wait_newer_champion(serving, before, timeout=900)
    return round(time.monotonic() - t0, 1)


def stack_loop(state: Path) -> dict:
    """Start a whole embedded stack, trigger drift_retrain with force=true through the REST API and time
    it until the serving app serves the new champion; peak PSS of all the stack's processes."""
    from stack.e2e import Airflow

    root = state / "stack"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLFLOW"))}
    env.update(
        STACK_DIR=str(root), MLFLOW_PORT=str(free_port()), SERVING_PORT=str(free_port()), AIRFLOW_PORT=str(free_port())
    )
    stack = [sys.executable, "-m", "stack"]
    result = {}
    with PeakSampler(lambda: stack_pids(root), interval=1.0) as memory:
        try:
            t0 = time.monotonic()
            run = subprocess.run([*stack, "run"], capture_output=True, text=True, cwd=REPO_ROOT, env=env)
            if run.returncode != 0:
                raise RuntimeError(f"make run failed: {run.stdout[-2000:]}")
            result["make_run_to_healthy_s"] = round(time.monotonic() - t0, 1)
            endpoints = read_env_file(root / "endpoints.env")
            serving = endpoints["SERVING_URL"]
            before = int(requests.get(f"{serving}/model/info", timeout=30).json()["version"])
            airflow = Airflow(endpoints["AIRFLOW_URL"], endpoints["AIRFLOW_USER"], endpoints["AIRFLOW_PASSWORD"])
            airflow.wait_unpaused_idle()
            t0 = time.monotonic()
            run_id = airflow.trigger({"force": True, "min_accuracy": 0.0, "tolerance": 1.0})
            while time.monotonic() - t0 < 900:
                version = int(requests.get(f"{serving}/model/info", timeout=30).json()["version"])
                if version > before:
                    break
                time.sleep(0.5)
            else:
                raise RuntimeError(f"no new champion 900 s after the trigger ({airflow.task_states(run_id)})")
            result["forced_trigger_to_new_champion_s"] = round(time.monotonic() - t0, 1)
            result["dag_run_state"] = airflow.wait(run_id)
            result["drift_to_new_champion_s"] = drift_event_loop(endpoints, airflow)
            result["stack_processes"] = len(stack_pids(root))
        finally:
            subprocess.run([*stack, "stop"], capture_output=True, text=True, cwd=REPO_ROOT, env=env)
    result["stack_peak_pss_mb"] = round(memory.peak_mb, 0)
    return result
