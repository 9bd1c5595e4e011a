"""Memory of process groups and of every process of the embedded stack, sampled while a benchmark runs
(peak = the largest sum seen). Processes are found with psutil.

The sum is of PSS (proportional set size: a page shared by n processes counts 1/n in each), so forked
workers (gunicorn's, the LocalExecutor's) are not counted once per process as a sum of RSS would: on an
idle embedded stack the RSS sum is 2.7 GB, the PSS sum 1.4 GB. Before 2026-12-02 the stack figure was an
RSS sum over the processes whose environment carried the stack's marker, which missed every process
that sets its title (gunicorn, Airflow): 1661 MB then undercounted."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import psutil

from stack.config import StackConfig
from stack.procs import group_members
from stack.stop import straggler_processes


def pids_in_group(pgid: int) -> list[int]:
    return [proc.pid for proc in group_members(pgid)]


def stack_pids(root: Path) -> list[int]:
    """Every live process of the embedded stack under `root`: the members of each part's process group
    (a process that sets its title hides its environment) and anything else carrying the stack's marker
    (a detached pipeline run)."""
    pids: set[int] = set()
    for pid_file in (root / "pids").glob("*.pid"):
        try:
            pids.update(pids_in_group(int(pid_file.read_text())))
        except (OSError, ValueError):
            continue
    pids.update(proc.pid for proc in straggler_processes(StackConfig.from_env(root)))
    return sorted(pids)


def total_pss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_full_info().pss
        except psutil.Error:
            continue
    return total / 2**20


class PeakSampler:
    """Samples total PSS of `select()` every `interval` seconds in a thread; `.peak_mb` is the maximum."""

    def __init__(self, select: Callable[[], list[int]], interval: float = 0.5):
        self.select, self.interval, self.peak_mb = select, interval, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, total_pss_mb(self.select()))
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, total_pss_mb(self.select()))
