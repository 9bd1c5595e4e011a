"""`python -m stack run|stop|status|retrain|e2e`: the embedded stack's command line (behind make)."""
from __future__ import annotations

import argparse
import os
import sys

from stack.config import StackConfig, read_env_file


def cmd_retrain(args, cfg: StackConfig) -> int:
    """Run the compiled pipeline once against the stack's MLflow (or $MLFLOW_TRACKING_URI)."""
    from kfp_components import run_local

    endpoints = read_env_file(cfg.endpoints_file)
    given = {p.partition("=")[0] for p in args.param}
    params = list(args.param)
    mlflow_uri = endpoints.get("MLFLOW_URL") or os.environ.get("MLFLOW_TRACKING_URI") or cfg.mlflow_url
    if "mlflow_uri" not in given:
        params.append(f"mlflow_uri={mlflow_uri}")
    if "serving_url" not in given:
        params.append(f"serving_url={endpoints.get('SERVING_URL') or cfg.serving_url}")
    # the stack's credentials, unless the caller brought its own
    for key in ("SERVING_ADMIN_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        if endpoints.get(key) and not os.environ.get(key):
            os.environ[key] = endpoints[key]
    argv = [arg for p in params for arg in ("--param", p)]
    argv += ["--pipeline-root", str(cfg.root / "kfp-local")]
    return run_local.main(argv)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stack", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="start the embedded stack and wait until it is healthy")
    run.add_argument("--only", metavar="PARTS", help="comma-separated parts to start (mlflow, serving, airflow)")
    sub.add_parser("stop", help="stop every process of the stack")
    sub.add_parser("status", help="show each part's health")
    retrain = sub.add_parser("retrain", help="run the compiled pipeline once on the embedded runner")
    retrain.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
    sub.add_parser("e2e", help="end-to-end check against the running stack")
    args = parser.parse_args(argv)
    cfg = StackConfig.from_env()
    if args.command == "retrain":
        return cmd_retrain(args, cfg)
    from stack import manager

    return {"run": manager.run, "stop": manager.stop, "status": manager.status,
            "e2e": manager.e2e}[args.command](cfg, args)


if __name__ == "__main__":
    sys.exit(main())
