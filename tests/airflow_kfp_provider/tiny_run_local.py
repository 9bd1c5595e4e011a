"""Runs a compiled pipeline YAML on kfp.local.SubprocessRunner with the run_local contract.

Used by the tests of the local backend while ``kfp_components.run_local`` (issue 2) is not in the
repository: ``--yaml PATH --param k=v ...``, exit 0 when the pipeline ran to its end, last line
``OUTCOME {json}``. Parameter values are converted to the types the pipeline declares.
"""
import argparse
import json
import sys

from airflow_kfp_provider.pipeline_spec import coerce_params, load_pipeline_spec

parser = argparse.ArgumentParser()
parser.add_argument("--yaml", required=True)
parser.add_argument("--param", action="append", default=[])
args = parser.parse_args()
spec = load_pipeline_spec(args.yaml)
params = coerce_params(spec, dict(p.split("=", 1) for p in args.param))

from kfp import local  # noqa: E402
from kfp.components import load_component_from_file  # noqa: E402

local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root="./local_outputs")
pipeline = load_component_from_file(args.yaml)
try:
    pipeline(**params)
except Exception as exc:  # a failed step: non-zero exit
    print(f"pipeline failed: {exc}", flush=True)
    sys.exit(1)
print("OUTCOME " + json.dumps({"run_id": "", "decision": "accepted", "reason": "tiny pipeline ran",
                               "registered_version": "1", "params": params}), flush=True)
