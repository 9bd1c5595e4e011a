"""Run the compiled pipeline once on KFP's embedded runner (`make retrain`, and the Airflow hook's
`local` backend): `python -m kfp_components.run_local [--yaml PATH] [--param name=value ...]`.

Exit status 0 when the pipeline ran to its end (a rejected candidate is a valid end), 1 when a step
failed, 2 for bad arguments. The last line printed is `OUTCOME {json}`.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import sys
import uuid
import warnings
from pathlib import Path

import yaml

from kfp_components.compile import COMPILED_PIPELINE

STEP_ERROR = re.compile(r"StepError: (.+)$")
TYPES = {"STRING": str, "NUMBER_INTEGER": int, "NUMBER_DOUBLE": float, "BOOLEAN": bool}


class UsageError(Exception):
    pass


def pipeline_parameters(yaml_path: Path) -> dict[str, dict]:
    """The pipeline's declared inputs: name -> {'parameterType', 'defaultValue', ...}."""
    if not yaml_path.is_file():
        raise UsageError(f"compiled pipeline {yaml_path} not found; run `make compile`")
    # the PipelineSpec document; a second document is the platform spec (kfp-kubernetes: the Secret
    # the step pods read on a cluster), which KFP's local runner ignores
    docs = list(yaml.safe_load_all(yaml_path.read_text()))
    spec = next((d for d in docs if isinstance(d, dict) and "root" in d), None)
    try:
        return spec["root"]["inputDefinitions"]["parameters"]
    except (KeyError, TypeError) as exc:
        raise UsageError(f"{yaml_path} is not a compiled KFP pipeline (no root.inputDefinitions)") from exc


def convert(name: str, value: str, declared: dict) -> object:
    kind = TYPES.get(declared.get("parameterType", "STRING"), str)
    if kind is bool:
        if value.lower() in ("true", "1", "yes"):
            return True
        if value.lower() in ("false", "0", "no"):
            return False
        raise UsageError(f"parameter {name}={value!r}: not a boolean")
    try:
        return kind(value)
    except ValueError as exc:
        raise UsageError(f"parameter {name}={value!r}: not {'an integer' if kind is int else 'a number'}") from exc


def parse_params(pairs: list[str], declared: dict[str, dict]) -> dict[str, object]:
    params = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise UsageError(f"--param {pair!r}: expected name=value")
        if name not in declared:
            raise UsageError(f"--param {name}: unknown parameter; the pipeline takes {', '.join(sorted(declared))}")
        params[name] = convert(name, value, declared[name])
    return params


class Tee:
    """Copy of everything the runner prints (the steps' output included), to find the step's error."""

    def __init__(self, stream):
        self.stream, self.lines, self._partial = stream, [], ""

    def write(self, text):
        self.stream.write(text)
        self._partial += text
        *done, self._partial = self._partial.split("\n")
        self.lines.extend(done)
        return len(text)

    def flush(self):
        self.stream.flush()


def step_error(lines: list[str]) -> str | None:
    for line in reversed(lines):
        match = STEP_ERROR.search(line)
        if match:
            return match.group(1).strip()
    return None


def run_pipeline(yaml_path: Path, params: dict, pipeline_root: Path) -> None:
    from kfp import components, local

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root), raise_on_error=True)
    pipeline = components.load_component_from_file(str(yaml_path))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*non-Python base image.*")
        pipeline(**params)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--yaml", type=Path, default=COMPILED_PIPELINE, help="compiled pipeline (default: %(default)s)")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--pipeline-root", type=Path,
                        default=Path(os.environ.get("KFP_LOCAL_PIPELINE_ROOT", ".stack/kfp-local")))
    args = parser.parse_args(argv)
    try:
        declared = pipeline_parameters(args.yaml)
        params = parse_params(args.param, declared)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not params.get("run_tag"):
        params["run_tag"] = f"retrain-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    mlflow_uri = params.get("mlflow_uri", declared["mlflow_uri"].get("defaultValue"))
    args.pipeline_root.mkdir(parents=True, exist_ok=True)

    tee = Tee(sys.stdout)
    failure = None
    real_stdout, sys.stdout = sys.stdout, tee
    try:
        run_pipeline(args.yaml, params, args.pipeline_root.resolve())
    except Exception as exc:  # the local runner raises RuntimeError naming the failed task
        failure = step_error(tee.lines) or str(exc)
    finally:
        sys.stdout = real_stdout

    outcome: dict = {"run_tag": params["run_tag"], "state": "FAILED" if failure else "SUCCEEDED"}
    if failure:
        outcome["error"] = failure
        print(f"\nRetrain {params['run_tag']} FAILED: {failure}")
    else:
        from kfp_components.outcome import find_outcome

        outcome.update(find_outcome(mlflow_uri, params["run_tag"]))
        if outcome["decision"] == "accepted":
            print(f"\nRetrain {params['run_tag']}: registered {params.get('model_name', 'iris-model')} version "
                  f"{outcome['registered_version']} as champion ({outcome['reason']})")
        else:
            print(f"\nRetrain {params['run_tag']}: candidate {outcome['decision']}: {outcome['reason']}")
    print("OUTCOME " + json.dumps(outcome, sort_keys=True))
    return 1 if failure else 0


if __name__ == "__main__":
    sys.exit(main())
