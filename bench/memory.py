"""Resident memory of process groups and of every process of the embedded stack, sampled while a
benchmark runs (peak = the largest sum seen)."""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable


def _rss_kb(pid: str) -> int:
    try:
        for line in (Path("/proc") / pid / "status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def pids_in_group(pgid: int) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[2]) == pgid:
                found.append(entry.name)
    return found


def pids_with_env(marker: str) -> list[str]:
    needle = marker.encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(entry.name)
            except OSError:
                pass
    return found


def total_rss_mb(pids: list[str]) -> float:
    return sum(_rss_kb(p) for p in pids) / 1024


class PeakSampler:
    """Samples total RSS of `select()` every `interval` seconds in a thread; `.peak_mb` is the maximum."""

    def __init__(self, select: Callable[[], list[str]], interval: float = 0.5):
        self.select, self.interval, self.peak_mb = select, interval, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, total_rss_mb(self.select()))
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, total_rss_mb(self.select()))
