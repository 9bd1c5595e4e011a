"""`make stop`: stop every process of the embedded stack (its data is kept).

The parts' process groups first (SIGTERM, SIGKILL after a grace period), then any straggler that
carries the stack's marker variable in its environment (a detached pipeline run, a re-parented worker).
"""

from __future__ import annotations

import logging
import os
from argparse import Namespace

import psutil

from stack.config import StackConfig
from stack.health import pid_file, read_leader
from stack.procs import stop_group
from stack.services import SERVICE_NAMES, STACK_MARKER
from stack.waiting import NotYet, poll

log = logging.getLogger(__name__)

# Seconds the stragglers get between SIGTERM and SIGKILL.
STRAGGLER_GRACE = 10.0


def straggler_processes(cfg: StackConfig) -> list[psutil.Process]:
    """The processes that carry this stack's marker variable (any process group), this one excepted. A
    process that sets its title (gunicorn, Airflow) overwrites what the kernel shows of its environment:
    those are found through their process group instead. Zombies show no environment: not counted."""
    me = os.getpid()
    found = []
    for proc in psutil.process_iter(["environ"]):
        environ = proc.info.get("environ") or {}
        if proc.pid != me and environ.get(STACK_MARKER) == str(cfg.root):
            found.append(proc)
    return found


def stack_stragglers(cfg: StackConfig) -> list[int]:
    """The pids of straggler_processes()."""
    return [proc.pid for proc in straggler_processes(cfg)]


def _signal(procs: list[psutil.Process], kill: bool) -> None:
    for proc in procs:
        try:
            proc.kill() if kill else proc.terminate()
        except psutil.NoSuchProcess:
            pass


def stop_stragglers(cfg: StackConfig, grace: float = STRAGGLER_GRACE) -> int:
    """SIGTERM the stack's stragglers and SIGKILL those still there after `grace` seconds; how many
    had to be killed."""
    found = straggler_processes(cfg)
    if not found:
        return 0
    _signal(found, kill=False)

    def gone() -> None:
        if straggler_processes(cfg):
            raise NotYet("stragglers left")

    try:
        poll(gone, timeout=grace, interval=0.3)
    except NotYet:
        left = straggler_processes(cfg)
        _signal(left, kill=True)
        return len(left)
    return 0


def stop(cfg: StackConfig, args: Namespace | None = None) -> int:
    stopped_any = False
    for name in reversed(SERVICE_NAMES):
        leader = read_leader(cfg, name)
        if leader is None:
            continue
        if not leader.recycled and stop_group(leader.pid):
            log.info("  %s: stopped (process group %s)", name, leader.pid)
            stopped_any = True
        else:
            log.info("  %s: was not running (stale pid file removed)", name)
        pid_file(cfg, name).unlink(missing_ok=True)
    leftovers = stop_stragglers(cfg)
    if leftovers:
        log.info("  killed %s leftover process(es) of the stack", leftovers)
    if stopped_any or leftovers:
        log.info("==> stack stopped; data kept in %s", cfg.root)
    else:
        log.info("==> nothing was running")
    return 0
