"""`make bench`: every benchmark in one run on this machine, written to bench/results/latest.{md,json}.

Only ratios measured in the same run mean much on a shared machine; the table says when and where.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import psutil

from stack.mlflow_server import start_mlflow
from stack.procs import free_port, stop_group

RESULTS = Path(__file__).resolve().parent / "results"
MODEL = "bench-model"


def machine() -> str:
    cpu, mem = platform.processor(), psutil.virtual_memory().total
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return f"{os.cpu_count()} cores ({cpu}), {mem / 2**30:.0f} GiB, Python {platform.python_version()}"


def benchmarks(results: dict, state: Path, args: argparse.Namespace) -> None:
    """Everything measured against one MLflow server without auth: serving, drift detection, events."""
    from bench import detection, drift, events, loop, serving_bench

    print("==> MLflow server", flush=True)
    proc, mlflow_tracking_uri = start_mlflow(state / "mlflow", free_port())
    try:
        print("==> retrain pipeline on the local runner (registers the champion)", flush=True)
        results["pipeline"] = loop.pipeline_run(mlflow_tracking_uri, MODEL, state / "kfp")
        print(f"  {results['pipeline']}", flush=True)
        results["import_cost_s"] = {
            m: loop.import_cost(m) for m in ("kfp", "mlflow", "skops.io", "sklearn.ensemble", "onnxruntime")
        }
        print("==> serving under load", flush=True)
        results["serving"] = serving_bench.bench_serving(mlflow_tracking_uri, MODEL, state, duration_s=args.duration)
        print("==> serving under faults: 64 connections, slow clients", flush=True)
        results["serving_faults"] = serving_bench.bench_faults(
            mlflow_tracking_uri, MODEL, state, duration_s=args.duration
        )
        print("==> drift detection quality (4 data sets, 4 detectors, held-out windows)", flush=True)
        results["drift_detection"] = detection.detection(windows=args.windows)
        print("==> false retrains of the drift watcher (in-distribution rows, one look a minute)", flush=True)
        results["false_retrains"] = events.false_retrains(mlflow_tracking_uri, MODEL)
        print("==> /drift/status latency by window size", flush=True)
        results["drift_status_latency"] = drift.status_latency(mlflow_tracking_uri, MODEL)
    finally:
        stop_group(proc.pid)


def main(argv=None) -> int:
    from bench import loop

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=int, default=20, help="seconds of load per server")
    parser.add_argument("--windows", type=int, default=300, help="windows per drift shift (false alarms: 1,000)")
    parser.add_argument("--skip-stack", action="store_true", help="skip the whole-stack loop measurement")
    parser.add_argument(
        "--only-loop", action="store_true", help="only the loop: retrain vs the tutorial, DAG parse, the whole stack"
    )
    args = parser.parse_args(argv)
    started = time.monotonic()
    results: dict = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine()}
    with tempfile.TemporaryDirectory(prefix="driftloop-bench-") as tmp:
        state = Path(tmp)
        print("==> make retrain beside the tutorial's pipeline (MLflow with basic auth)", flush=True)
        results["retrain_vs_tutorial"] = loop.retrain_vs_tutorial(state)
        print(f"  ratio {results['retrain_vs_tutorial']['ratio']}", flush=True)
        if not args.only_loop:
            benchmarks(results, state, args)
        print("==> DAG parse time", flush=True)
        results["dag_parse"] = loop.dag_parse_time()
        if not args.skip_stack:
            print("==> whole embedded stack: make run, forced trigger → new champion, memory", flush=True)
            results["stack"] = loop.stack_loop(state)
    results["bench_wall_s"] = round(time.monotonic() - started, 1)
    RESULTS.mkdir(exist_ok=True)
    stem = "latest-loop" if args.only_loop else "latest"  # a partial run never overwrites the whole one
    (RESULTS / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
    from bench.report import markdown

    (RESULTS / f"{stem}.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
