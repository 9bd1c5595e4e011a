"""The one compile entry point: `python -m kfp_components.compile [--output PATH]` (`make compile`).

Compile-time settings (environment): COMPONENT_IMAGE (the components image, see components.py) and
PIPELINE_SECRET (the Secret the step pods read their credentials from, see pipeline.py). The committed
retrain_pipeline.yaml is compiled with neither set.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from kfp import compiler

from driftloop.logs import configure_logging
from kfp_components.pipeline import PIPELINE_NAME, retrain_pipeline

COMPILED_PIPELINE = Path(__file__).resolve().parent / "retrain_pipeline.yaml"


def compile_pipeline(output: Path = COMPILED_PIPELINE) -> Path:
    """Compile the retrain pipeline to `output` (the committed YAML by default); returns `output`."""
    compiler.Compiler().compile(pipeline_func=retrain_pipeline, package_path=str(output))
    return output


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", type=Path, default=COMPILED_PIPELINE)
    args = parser.parse_args(argv)
    configure_logging()
    print(f"Compiled {PIPELINE_NAME} to {compile_pipeline(args.output)}")


if __name__ == "__main__":
    main()
