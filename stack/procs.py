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
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def start_process(cmd: list[str], log_path: Path, env: dict | None = None, cwd: Path | None = None) -> subprocess.Popen:
    """Start `cmd` detached in a new session (its own process group), output appended to log_path."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab")
    return subprocess.Popen(
        cmd,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        start_new_session=True,
    )


def wait_http_ok(url: str, timeout: float, proc: subprocess.Popen | None = None, interval: float = 0.5) -> None:
    """Block until GET url answers 2xx; raise with the reason when it does not within timeout.

    Fails early when the process we are waiting for has already exited.
    """
    deadline = time.monotonic() + timeout
    last_error = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with code {proc.returncode} before it was healthy")
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                if 200 <= resp.status < 300:
                    return
                last_error = f"HTTP {resp.status}"
        except urllib.error.HTTPError as exc:
            last_error = f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            last_error = str(exc)
        time.sleep(interval)
    raise TimeoutError(f"{url} not healthy after {timeout:.0f}s: {last_error}")


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not group_alive(pgid):
            return True
        _reap(pgid)
        time.sleep(0.2)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for _ in range(50):
        _reap(pgid)
        if not group_alive(pgid):
            break
        time.sleep(0.1)
    return True


def _reap(pid: int) -> None:
    """Collect our own exited child so that it does not linger as a zombie (zombies keep a group 'alive')."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
