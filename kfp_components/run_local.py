"""Run the compiled retrain pipeline once on KFP's embedded runner (`make retrain`, and the runner of the
Airflow connection's `local` backend):

`python -m kfp_components.run_local [--yaml PATH] [--param name=value ...] [--outcome-file PATH]`

Parameters are checked and converted by the provider's one coercion (`airflow_kfp_provider.pipeline_spec`,
through `airflow_kfp_provider.local_runner`). Exit status 0 when the pipeline ran to its end (a rejected
candidate is a valid end), 1 when a step failed, 2 for bad arguments. The outcome (`run_tag`, `state`,
`decision`, `reason`, `registered_version`, `mlflow_run_id`, or `error`) is written as a JSON
object to `--outcome-file` (default: `$KFP_RUN_OUTCOME_FILE`, which the local backend sets to
`outcome.json` in the run's directory); a one-line summary is printed for people.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import sys
import uuid
from pathlib import Path
from typing import Any, TextIO

from airflow_kfp_provider.local_runner import build_parser, parse_params, run_pipeline
from airflow_kfp_provider.local_runs import OUTCOME_FILE_ENV, write_outcome
from airflow_kfp_provider.pipeline_spec import PipelineSpecError, load_pipeline_spec, pipeline_parameters
from driftloop.contract import DEFAULT_MODEL_NAME
from driftloop.logs import configure_logging
from kfp_components.compile import COMPILED_PIPELINE

log = logging.getLogger(__name__)

STEP_ERROR = re.compile(r"StepError: (.+)$")
MLFLOW_PARAM = "mlflow_tracking_uri"


class Tee:
    """Copy of everything the runner prints (the steps' output included), to find the step's error."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.lines: list[str] = []
        self._partial = ""

    def write(self, text: str) -> int:
        self.stream.write(text)
        self._partial += text
        *done, self._partial = self._partial.split("\n")
        self.lines.extend(done)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def step_error(lines: list[str]) -> str | None:
    for line in reversed(lines):
        match = STEP_ERROR.search(line)
        if match:
            return match.group(1).strip()
    return None


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    parser = build_parser(__doc__, default_yaml=str(COMPILED_PIPELINE))
    parser.set_defaults(pipeline_root=Path(os.environ.get("KFP_LOCAL_PIPELINE_ROOT", ".stack/kfp-local")))
    parser.add_argument(
        "--outcome-file",
        default=os.environ.get(OUTCOME_FILE_ENV),
        help=f"write the outcome here as JSON (default: ${OUTCOME_FILE_ENV})",
    )
    args = parser.parse_args(argv)
    try:
        params = parse_params(args.yaml, args.param)
        declared = pipeline_parameters(load_pipeline_spec(args.yaml))
    except PipelineSpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not params.get("run_tag"):
        params["run_tag"] = f"retrain-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    mlflow_tracking_uri = params.get(MLFLOW_PARAM, (declared.get(MLFLOW_PARAM) or {}).get("default"))

    tee = Tee(sys.stdout)
    failure = None
    real_stdout, sys.stdout = sys.stdout, tee  # type: ignore[assignment]
    try:
        run_pipeline(args.yaml, params, args.pipeline_root)
    except Exception as exc:  # the local runner raises RuntimeError naming the failed task
        failure = step_error(tee.lines) or str(exc)
    finally:
        sys.stdout = real_stdout

    outcome: dict[str, Any] = {"run_tag": params["run_tag"], "state": "FAILED" if failure else "SUCCEEDED"}
    if failure:
        outcome["error"] = failure
        summary = f"Retrain {params['run_tag']} FAILED: {failure}"
    else:
        from kfp_components.outcome import find_outcome

        outcome.update(find_outcome(str(mlflow_tracking_uri), params["run_tag"]))
        if outcome["decision"] == "accepted":
            summary = (
                f"Retrain {params['run_tag']}: registered {params.get('model_name', DEFAULT_MODEL_NAME)} "
                f"version {outcome['registered_version']} as champion ({outcome['reason']})"
            )
        else:
            summary = f"Retrain {params['run_tag']}: candidate {outcome['decision']}: {outcome['reason']}"
    write_outcome(args.outcome_file, outcome)
    print(f"\n{summary}")  # the command's result, for people
    return 1 if failure else 0


if __name__ == "__main__":
    sys.exit(main())
