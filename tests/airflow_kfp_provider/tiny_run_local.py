"""A project-style runner for the tiny pipeline: the provider's local runner plus an outcome file.

``--yaml PATH --param k=v ...``; parameters are converted by the provider's one coercion
(``airflow_kfp_provider.local_runner.parse_params``), the pipeline runs on kfp.local.SubprocessRunner,
exit 0 when it ran to its end, and the outcome (with the converted parameters) is written as JSON to
``$KFP_RUN_OUTCOME_FILE``.
"""

import json
import os
import sys

from airflow_kfp_provider.local_runner import build_parser, parse_params, run_pipeline

args = build_parser().parse_args()
params = parse_params(args.yaml, args.param)
try:
    run_pipeline(args.yaml, params, "./local_outputs")
except Exception as exc:  # a failed step: non-zero exit
    print(f"pipeline failed: {exc}", flush=True)
    sys.exit(1)
with open(os.environ["KFP_RUN_OUTCOME_FILE"], "w") as fh:
    json.dump(
        {
            "mlflow_run_id": "",
            "decision": "accepted",
            "reason": "tiny pipeline ran",
            "registered_version": "1",
            "params": params,
        },
        fh,
    )
