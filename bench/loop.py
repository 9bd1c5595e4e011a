"""Loop latency: the retrain pipeline on the local runner beside the tutorial's pipeline (same venv,
same MLflow server with the stack's basic auth), each step split into process start-up, imports and
its own work; DAG file parse time; and the time from a forced DAG trigger (Airflow REST API), and from
drift through the asset event, to the new champion being served, on a whole embedded stack started for
the benchmark (whose peak memory is sampled meanwhile)."""

from __future__ import annotations

import os
import re
import secrets
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import requests

from bench.memory import PeakSampler, stack_pids
from stack.config import REPO_ROOT, mlflow_client_env, read_env_file
from stack.mlflow_server import start_mlflow
from stack.procs import free_port, stop_group

TASK_LINE = re.compile(
    r"^(\d\d:\d\d:\d\d\.\d+) - INFO - (?:Executing task|Task) '([\w-]+)'(?: finished with status (\w+))?"
)
ANSI = re.compile(r"\x1b\[[0-9;]*m")
# KFP's executor, in the step's process, about to import the component's module and call it
EXECUTOR_LINE = re.compile(r"\[KFP Executor \d{4}-\d\d-\d\d (\d\d:\d\d:\d\d),(\d+) INFO\]: Looking for component")
# -X importtime: a top-level import (nested ones are indented after the second bar) and its cumulative µs
TOP_IMPORT = re.compile(r"^\s*import time:\s+\d+ \|\s+(\d+) \| \S")
TUTORIAL_MODEL = "tutorial-model"


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


def step_split(output: str) -> dict[str, dict[str, float]]:
    """Per step of a run made with PYTHONPROFILEIMPORTTIME=1: start-up (the runner spawns the process
    until KFP's executor loads the component), imports (every top-level import after that: the step's
    own, lazy ones included) and own work (the rest of the step's wall time)."""
    step, spawned, loaded, imports, split = None, {}, {}, {}, {}
    for raw in output.splitlines():
        line = ANSI.sub("", raw)
        task = TASK_LINE.match(line)
        if task:
            stamp = datetime.strptime(task.group(1), "%H:%M:%S.%f")
            if task.group(3) is None:
                step, spawned[task.group(2)] = task.group(2), stamp
            elif task.group(2) in loaded:
                name = task.group(2)
                total = (stamp - spawned[name]).total_seconds()
                start_up = (loaded[name] - spawned[name]).total_seconds()
                work = total - start_up - imports[name]
                split[name] = {
                    k: round(v, 2) for k, v in zip(SPLIT_KEYS, (total, start_up, imports[name], work), strict=True)
                }
                step = None
            continue
        if step is None:
            continue
        executor = EXECUTOR_LINE.search(line)
        if executor and step not in loaded:
            loaded[step] = datetime.strptime(f"{executor.group(1)}.{executor.group(2)}", "%H:%M:%S.%f")
            imports[step] = 0.0
            continue
        top = TOP_IMPORT.match(line)
        if top and step in loaded:
            imports[step] += int(top.group(1)) / 1e6
    return split


SPLIT_KEYS = ("total_s", "start_up_s", "imports_s", "work_s")


def run_and_time(cmd: list[str], env: dict[str, str] | None = None) -> dict:
    """Run a pipeline runner command; wall time, each step's wall time and the output."""
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT, env=env)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"pipeline run failed: {proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    steps = step_durations(proc.stdout)
    return {
        "wall_s": round(wall, 1),
        "steps_s": steps,
        "runner_s": round(wall - sum(steps.values()), 1),
        "output": proc.stdout,
    }


def runner_command(module: str, root: Path, params: dict[str, str], *extra: str) -> list[str]:
    """A local-runner command line: `python -m <module> [extra] --pipeline-root root --param k=v ...`."""
    cmd = [sys.executable, "-m", module, *extra, "--pipeline-root", str(root)]
    for key, value in params.items():
        cmd += ["--param", f"{key}={value}"]
    return cmd


def retrain_command(mlflow_tracking_uri: str, model_name: str, root: Path) -> list[str]:
    """`make retrain`'s runner (the compiled pipeline on the local runner), deploy step without a target."""
    params = {
        "mlflow_tracking_uri": mlflow_tracking_uri,
        "model_name": model_name,
        "deploy_target": "none",
        "min_accuracy": "0.0",
    }
    return runner_command("kfp_components.run_local", root, params)


def pipeline_run(mlflow_tracking_uri: str, model_name: str, root: Path, env: dict[str, str] | None = None) -> dict:
    result = run_and_time(retrain_command(mlflow_tracking_uri, model_name, root), env)
    result.pop("output")
    return result


def tutorial_command(mlflow_tracking_uri: str, package: Path, root: Path) -> list[str]:
    """The tutorial's compiled pipeline on the same local runner (airflow_kfp_provider.local_runner)."""
    params = {"mlflow_uri": mlflow_tracking_uri, "model_name": TUTORIAL_MODEL}
    return runner_command("airflow_kfp_provider.local_runner", root, params, "--yaml", str(package))


def retrain_vs_tutorial(state: Path, rounds: int = 3) -> dict:
    """`make retrain`'s pipeline and the tutorial's (bench/tutorial_pipeline.py), alternately, against one
    MLflow server run as the embedded stack runs it (basic auth), in this venv. A first run of each
    registers a champion, so that the timed runs of both compare a candidate with one; then one more
    run of ours under -X importtime splits its steps."""
    login = {
        "MLFLOW_TRACKING_USERNAME": "bench",
        "MLFLOW_TRACKING_PASSWORD": secrets.token_urlsafe(24),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_urlsafe(32),
    }
    proc, url = start_mlflow(state / "mlflow-auth", free_port(), auth_secrets=login)
    env = {**os.environ, **mlflow_client_env(login, url)}
    package = state / "tutorial_pipeline.yaml"
    subprocess.run(
        [sys.executable, "-m", "bench.tutorial_pipeline", "--output", str(package)], check=True, cwd=REPO_ROOT, env=env
    )
    ours_cmd = retrain_command(url, "loop-model", state / "kfp-ours")
    tutorial_cmd = tutorial_command(url, package, state / "kfp-tutorial")
    runs: dict[str, list[dict]] = {"ours": [], "tutorial": []}
    try:
        run_and_time(ours_cmd, env)
        run_and_time(tutorial_cmd, env)
        for _ in range(rounds):
            runs["ours"].append(run_and_time(ours_cmd, env))
            runs["tutorial"].append(run_and_time(tutorial_cmd, env))
        profiled = run_and_time(ours_cmd, {**env, "PYTHONPROFILEIMPORTTIME": "1"})
    finally:
        stop_group(proc.pid)

    def median_run(which: str) -> dict:
        ordered = sorted(runs[which], key=lambda r: r["wall_s"])
        run = ordered[(len(ordered) - 1) // 2]
        return {k: v for k, v in run.items() if k != "output"}

    ours, tutorial = median_run("ours"), median_run("tutorial")
    return {
        "rounds": rounds,
        "ours": ours,
        "tutorial": tutorial,
        "ours_walls_s": [r["wall_s"] for r in runs["ours"]],
        "tutorial_walls_s": [r["wall_s"] for r in runs["tutorial"]],
        "ratio": round(ours["wall_s"] / tutorial["wall_s"], 2),
        "split": step_split(profiled["output"]),
        "split_runner_s": profiled["runner_s"],
    }


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
