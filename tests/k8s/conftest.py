"""One render of the whole cluster deployment per session (python -m k8s does the same into build/k8s/)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from k8s.render import Sources, render_all


@pytest.fixture(scope="session")
def k8s_out(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("k8s-render")


@pytest.fixture(scope="session")
def parts(k8s_out):
    """{part: Part} of the real values, rendered once (files in a temporary build/k8s)."""
    return render_all(Sources(out=k8s_out))


@pytest.fixture
def fresh(parts):
    """A deep copy of the render that a test may break."""
    return copy.deepcopy(parts)
