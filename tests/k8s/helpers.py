"""Helpers of the tests/k8s tests: broken copies of values files, re-renders, one wiring check."""

from __future__ import annotations

from pathlib import Path

import yaml

from k8s.render import Sources, render_part
from k8s.wiring import default_values_files, run_checks


def write_values(path: Path, source: Path, edit) -> Path:
    """A copy of values file `source` at `path`, changed by edit(dict)."""
    data = yaml.safe_load(source.read_text())
    edit(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def rerender(parts, name: str, values: Path):
    """`parts` with `name` rendered again from `values` (not written)."""
    return {**parts, name: render_part(name, Sources(overrides={name: values}), write=False)}


def check(parts, name: str, values_files=None):
    """The CheckResult of wiring check `name`."""
    files = default_values_files() if values_files is None else values_files
    return next(r for r in run_checks(parts, files) if r.name == name)
