"""Run a compiled pipeline once on KFP's local runner (``kfp.local.SubprocessRunner``): the ``local``
backend's default runner command.

``python -m airflow_kfp_provider.local_runner --yaml PATH [--param name=value ...] [--pipeline-root DIR]``

Parameter values are text; they are converted to the types the pipeline declares by
:func:`airflow_kfp_provider.pipeline_spec.coerce_params` (unknown names and bad values: exit 2). Exit 0
when the pipeline ran to its end, 1 when a step failed. A project runner that has more to tell (a
decision, a registered model) builds on :func:`parse_params` and :func:`run_pipeline` and writes its
outcome as JSON to ``$KFP_RUN_OUTCOME_FILE``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from airflow_kfp_provider.pipeline_spec import PipelineSpecError, coerce_params, load_pipeline_spec

log = logging.getLogger(__name__)

PIPELINE_ROOT_ENV = "KFP_LOCAL_PIPELINE_ROOT"


def parse_params(yaml_path: str | os.PathLike[str], pairs: list[str]) -> dict[str, Any]:
    """``["name=value", ...]`` checked against and converted to the pipeline's declared parameters.

    Raises PipelineSpecError (unreadable pipeline, malformed pair, unknown name, value of a wrong type).
    """
    spec = load_pipeline_spec(yaml_path)
    raw: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise PipelineSpecError(f"--param {pair!r}: expected name=value")
        raw[name] = value
    return coerce_params(spec, raw)


def run_pipeline(
    yaml_path: str | os.PathLike[str], params: dict[str, Any], pipeline_root: str | os.PathLike[str]
) -> None:
    """Run the compiled pipeline once in this process; raises when a step fails."""
    from kfp import components, local

    Path(pipeline_root).mkdir(parents=True, exist_ok=True)
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(Path(pipeline_root).resolve()),
        raise_on_error=True,
    )
    pipeline = components.load_component_from_file(str(yaml_path))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*non-Python base image.*")
        pipeline(**params)


def build_parser(description: str | None = None, default_yaml: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=description or __doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--yaml",
        type=Path,
        required=default_yaml is None,
        default=default_yaml,
        help="compiled pipeline YAML" + (" (default: %(default)s)" if default_yaml else ""),
    )
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument(
        "--pipeline-root",
        type=Path,
        default=Path(os.environ.get(PIPELINE_ROOT_ENV, "local_outputs")),
        help=f"where artifacts go (default: ${PIPELINE_ROOT_ENV}, else ./local_outputs)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        params = parse_params(args.yaml, args.param)
    except PipelineSpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        run_pipeline(args.yaml, params, args.pipeline_root)
    except Exception as exc:  # the local runner raises RuntimeError naming the failed task
        log.error("pipeline %s failed: %s", args.yaml, exc)
        return 1
    log.info("pipeline %s ran to its end", args.yaml)
    return 0


if __name__ == "__main__":
    sys.exit(main())
