"""A stand-in for ``python -m kfp_components.run_local`` that honours its contract without running KFP.

Contract (docs/contracts.md): ``--yaml PATH --param k=v ...``; exit 0 when the pipeline ran to its
end, non-zero when a step failed; the outcome is a JSON object written to ``$KFP_RUN_OUTCOME_FILE``.
Behaviour follows the ``msg``
parameter so that tests can steer it: ``fail`` -> a step fails (exit 1), ``slow`` -> runs for a long
time (until killed), ``reject`` -> the candidate is rejected; anything else -> accepted as version
``$FAKE_RUNNER_VERSION`` (default 7). It records what it received in ``received.json`` (cwd).
"""

import argparse
import json
import os
import sys
import time

parser = argparse.ArgumentParser()
parser.add_argument("--yaml", required=True)
parser.add_argument("--param", action="append", default=[])
args = parser.parse_args()
params = dict(p.split("=", 1) for p in args.param)
with open("received.json", "w") as fh:
    json.dump(
        {
            "yaml": args.yaml,
            "params": params,
            "pid": os.getpid(),
            "pipeline_root": os.environ.get("KFP_LOCAL_PIPELINE_ROOT"),
        },
        fh,
    )
if not os.path.isfile(args.yaml):
    print(f"no such pipeline file: {args.yaml}", file=sys.stderr)
    sys.exit(2)
print(f"fake runner: running {args.yaml} with {params}", flush=True)
msg = params.get("msg") or os.environ.get("FAKE_RUNNER_MODE", "")
time.sleep(float(os.environ.get("FAKE_RUNNER_SECONDS", "0.3")))
if msg == "fail":
    print("step train-model failed: ValueError: data_uri /nope.csv does not exist", flush=True)
    sys.exit(1)
if msg == "slow":
    time.sleep(600)
outcome = {
    "mlflow_run_id": "mlflow-run-1",
    "decision": "accepted",
    "reason": "accuracy 0.97 >= 0.9",
    "registered_version": os.environ.get("FAKE_RUNNER_VERSION", "7"),
}
if msg == "reject":
    outcome.update(decision="rejected", reason="accuracy 0.5 < min_accuracy 0.9", registered_version=None)
with open(os.environ["KFP_RUN_OUTCOME_FILE"], "w") as fh:
    json.dump(outcome, fh)
print("fake runner: done", flush=True)
