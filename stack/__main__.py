"""`python -m stack run|stop|status|retrain|e2e`: the embedded stack's command line (behind make).

What the commands report goes through the `stack.*` loggers; this entry point shows those lines on
stdout as they are (as JSON lines with LOG_FORMAT=json), and every other logger on stderr
(driftloop.logs)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from driftloop.contract import MLFLOW_TRACKING_URI_ENV
from driftloop.logs import configure_logging
from stack.config import StackConfig, read_env_file


def configure_output() -> None:
    """driftloop's logging, plus the stack's own loggers as this command's output on stdout."""
    configure_logging()
    console = logging.StreamHandler(sys.stdout)
    if (os.environ.get("LOG_FORMAT") or "text").strip().lower() == "json":
        console.setFormatter(logging.getLogger().handlers[0].formatter)
    else:
        console.setFormatter(logging.Formatter("%(message)s"))
    stack_log = logging.getLogger("stack")
    stack_log.handlers = [console]
    stack_log.propagate = False


def cmd_retrain(args: argparse.Namespace, cfg: StackConfig) -> int:
    """Run the compiled pipeline once against the stack's MLflow (or $MLFLOW_TRACKING_URI)."""
    from kfp_components import run_local

    endpoints = read_env_file(cfg.endpoints_file)
    given = {p.partition("=")[0] for p in args.param}
    params = list(args.param)
    tracking_uri = (
        endpoints.get(MLFLOW_TRACKING_URI_ENV) or os.environ.get(MLFLOW_TRACKING_URI_ENV) or cfg.mlflow_tracking_uri
    )
    if "mlflow_tracking_uri" not in given:
        params.append(f"mlflow_tracking_uri={tracking_uri}")
    if "serving_url" not in given:
        params.append(f"serving_url={endpoints.get('SERVING_URL') or cfg.serving_url}")
    # the stack's credentials, unless the caller brought its own
    for key in ("SERVING_ADMIN_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        if endpoints.get(key) and not os.environ.get(key):
            os.environ[key] = endpoints[key]
    argv = [arg for p in params for arg in ("--param", p)]
    argv += ["--pipeline-root", str(cfg.root / "kfp-local")]
    code: int = run_local.main(argv)
    return code


def cmd_e2e(args: argparse.Namespace, cfg: StackConfig) -> int:
    from stack.e2e import E2E_ERRORS, run_e2e

    try:
        report = run_e2e(cfg, scheduled_retrain=not args.no_scheduled_retrain)
    except E2E_ERRORS as exc:
        print(f"\nE2E FAILED: {exc}", flush=True)
        return 1
    if "make_run_to_healthy_s" in report.timings:
        print(f"make run → healthy took {report.timings['make_run_to_healthy_s']:.0f}s (last start)")
    print(
        f"\nE2E PASSED: {report.n} steps in {report.seconds:.0f}s; drift (last shifted row) → new champion "
        f"served in {report.timings['drift_to_new_champion_s']:.0f}s through the asset event (goal < 180 s); "
        f"forced trigger → new champion served in {report.timings['forced_trigger_to_new_champion_s']:.0f}s",
        flush=True,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stack", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="start the embedded stack and wait until it is healthy")
    run.add_argument("--only", metavar="PARTS", help="comma-separated parts to start (mlflow, serving, airflow)")
    sub.add_parser("stop", help="stop every process of the stack")
    sub.add_parser("status", help="show each part's health")
    retrain = sub.add_parser("retrain", help="run the compiled pipeline once on the embedded runner")
    retrain.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
    e2e = sub.add_parser("e2e", help="end-to-end check against the running stack")
    e2e.add_argument(
        "--no-scheduled-retrain",
        action="store_true",
        help="leave out the scheduled path with drift (a third full retrain; the test suite covers it with "
        "dag.test() and a real local run)",
    )
    args = parser.parse_args(argv)
    try:
        configure_output()
    except ValueError as exc:  # a bad LOG_LEVEL / LOG_FORMAT
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cfg = StackConfig.from_env()
    if args.command == "retrain":
        return cmd_retrain(args, cfg)
    if args.command == "e2e":
        return cmd_e2e(args, cfg)
    from stack.start import run as run_stack
    from stack.status import status
    from stack.stop import stop

    commands = {"run": run_stack, "stop": stop, "status": status}
    return commands[args.command](cfg, args)


if __name__ == "__main__":
    sys.exit(main())
