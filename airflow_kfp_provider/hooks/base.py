"""The interface every KFP backend implements, and the backend-neutral view of a run.

A backend is chosen by the connection (:class:`~airflow_kfp_provider.config.KfpConnectionConfig`) and
driven by :class:`~airflow_kfp_provider.hooks.kfp.KfpHook`. Each backend raises the provider's typed
errors (:mod:`airflow_kfp_provider.exceptions`) where it knows what went wrong, and reports the states of
:mod:`airflow_kfp_provider.states`.
"""

from __future__ import annotations

import abc
from dataclasses import asdict, dataclass, field
from typing import Any

from airflow_kfp_provider.config import KfpConnectionConfig


@dataclass
class PipelineRun:
    """A backend-neutral view of one pipeline run (``run_id`` is the KFP run's id).

    ``to_dict()`` is plain JSON (XCom, trigger events).
    """

    run_id: str
    display_name: str
    state: str
    backend: str
    created_at: str | None = None
    finished_at: str | None = None
    error: str | None = None
    outputs: dict[str, Any] = field(default_factory=dict)
    url: str | None = None
    raw_state: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class KfpBackend(abc.ABC):
    """Submit, read, find and cancel pipeline runs on one kind of KFP installation."""

    #: the value of the connection's ``extra.backend`` that selects this backend
    name: str = ""

    def __init__(self, cfg: KfpConnectionConfig) -> None:
        self.cfg = cfg

    @abc.abstractmethod
    def preflight(self, pipeline_package: str | None) -> None:
        """Check configuration and reachability before anything is submitted (raise with the fix)."""

    @abc.abstractmethod
    def submit(self, run_name: str, pipeline_package: str, params: dict[str, Any]) -> PipelineRun:
        """Start a run of the compiled pipeline with (already coerced) parameters."""

    @abc.abstractmethod
    def get_run(self, run_id: str) -> PipelineRun:
        """The run's current view; raises KfpRunNotFound, KfpTransientError, ..."""

    @abc.abstractmethod
    def find_run_by_name(self, run_name: str) -> PipelineRun | None:
        """The newest run with this display name, or None."""

    @abc.abstractmethod
    def cancel(self, run_id: str) -> None:
        """Ask the backend to stop the run (returns before it has stopped)."""
