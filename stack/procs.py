"""Starting, probing and stopping the long-running processes of the embedded stack.

Shared by the test fixtures and by `make run`, so that what the tests start is exactly what users
start. Every service runs in its own process group: Airflow and gunicorn fork children, and only a
group signal (with a SIGKILL fallback) reliably stops all of them.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

import psutil
import requests

from stack.waiting import NotYet, poll


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def start_process(
    cmd: list[str], log_path: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start `cmd` detached in a new session (its own process group), output appended to log_path."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            start_new_session=True,
        )


def wait_http_ok(url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None, interval: float = 0.5) -> None:
    """Block until GET url answers 2xx; raise with the reason when it does not within timeout.

    Fails early when the process we are waiting for has already exited.
    """

    def answered() -> None:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with code {proc.returncode} before it was healthy")
        try:
            resp = requests.get(url, timeout=5)
        except requests.RequestException as exc:
            raise NotYet(str(exc)) from None
        if not 200 <= resp.status_code < 300:
            raise NotYet(f"HTTP {resp.status_code}")

    try:
        poll(answered, timeout=timeout, interval=interval)
    except NotYet as exc:
        raise TimeoutError(f"{url} not healthy after {timeout:.0f}s: {exc}") from None


def group_members(pgid: int) -> list[psutil.Process]:
    """The live (not zombie) processes of process group `pgid`, the leader included if it lives."""
    members: list[psutil.Process] = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                members.append(proc)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
        except (PermissionError, psutil.AccessDenied):
            members.append(proc)
    return members


def group_alive(pgid: int) -> bool:
    """Whether any process of the group still runs. Zombies do not count: a killed leader whose
    parent (here: whoever reaps orphans, which may be nobody in a container) has not collected it
    still makes `killpg(pgid, 0)` succeed."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return bool(group_members(pgid))


@dataclass(frozen=True)
class LeaderState:
    """What became of the process a pid file names. `alive`: it runs (not a zombie) and is still the
    process we started. `recycled`: the pid now belongs to another process (it does not lead its own
    group, or it is younger than the pid file); the kernel does not hand out a pid that is still some
    group's id, so our group is then empty. `leftovers`: other live processes in the group of a leader
    that is not alive (orphans such as LocalExecutor workers, which outlive a killed scheduler)."""

    pid: int
    alive: bool
    zombie: bool = False
    recycled: bool = False
    leftovers: int = 0
    started_at: float | None = None

    def describe(self) -> str:
        why = (
            "is a zombie"
            if self.zombie
            else "gone (the pid now belongs to another process)"
            if self.recycled
            else "gone"
        )
        left = f"{self.leftovers} leftover process{'' if self.leftovers == 1 else 'es'} in its group"
        return f"leader pid {self.pid} {why}, {left}"


def leader_state(pid: int, not_after: float | None = None) -> LeaderState:
    """Inspect the leader `pid`, whose pid file was written at `not_after` (Unix time) when known."""
    try:
        proc = psutil.Process(pid)
        started_at = proc.create_time()
        zombie = proc.status() == psutil.STATUS_ZOMBIE
        # process start times are known to about a second (boot time + clock ticks)
        recycled = not zombie and (os.getpgid(pid) != pid or (not_after is not None and started_at > not_after + 2.0))
    except (psutil.NoSuchProcess, ProcessLookupError):
        zombie, recycled, started_at = False, False, None
    else:
        if not zombie and not recycled:
            return LeaderState(pid, alive=True, started_at=started_at)
    leftovers = 0 if recycled else sum(1 for p in group_members(pid) if p.pid != pid)
    return LeaderState(pid, alive=False, zombie=zombie, recycled=recycled, leftovers=leftovers)


def stop_group(pgid: int, grace: float = 10.0) -> bool:
    """SIGTERM the whole process group, then SIGKILL whatever is left after `grace` seconds.

    Returns True when something was running.
    """
    if not group_alive(pgid):
        return False
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    try:
        os.killpg(pgid, signal.SIGCONT)  # a stopped (SIGSTOPped) process acts on SIGTERM only once resumed
    except ProcessLookupError:
        pass
    if wait_group_gone(pgid, grace, interval=0.2):
        return True
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    wait_group_gone(pgid, 5.0, interval=0.1)
    return True


def wait_group_gone(pgid: int, timeout: float, interval: float = 0.2) -> bool:
    """Whether every process of the group is gone (zombies count as gone) within `timeout` seconds."""

    def gone() -> None:
        _reap(pgid)
        if group_alive(pgid):
            raise NotYet(f"process group {pgid} still runs")

    try:
        poll(gone, timeout=timeout, interval=interval)
    except NotYet:
        return False
    return True


def _reap(pid: int) -> None:
    """Collect our own exited child so that it does not linger as a zombie."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
