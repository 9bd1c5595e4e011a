"""Run records and detached runner processes for the ``local`` KFP backend.

A local run executes the compiled pipeline YAML with ``python -m kfp_components.run_local --yaml PATH
--param k=v ...`` (see docs/contracts.md) in a process that is detached from Airflow: a small
supervisor (this module, ``python -m airflow_kfp_provider.local_runs supervise RUN_DIR``) starts the
runner in its own session, waits for it and writes the result into the run record. Neither the
Airflow worker that submitted the run nor the triggerer that watches it has to stay alive, and the
record survives restarts of all of them.

Layout under the runs directory (``runs_dir``)::

    runs/<run_id>/record.json   the run record, replaced atomically on every change
    runs/<run_id>/run.log       everything the runner printed (the pipeline's log)
    runs/<run_id>/lock          flock() guard for read-modify-write of the record
    names/<sha256 of name>      the run id that holds a display name (created atomically, first wins)

The record holds: run_id, display_name, state (a ``RunState`` name), created_at, started_at,
finished_at, error, outputs (``{"outcome": {...}}`` from the runner's last ``OUTCOME {json}`` line),
exit_code, the command, the pipeline package and parameters, and the supervisor's pid and host.

Only the standard library is used here: the supervisor starts in well under a second.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

PENDING, RUNNING, SUCCEEDED, FAILED, CANCELING, CANCELED = (
    "PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELING", "CANCELED",
)
TERMINAL = {SUCCEEDED, FAILED, CANCELED, "SKIPPED"}

OUTCOME_PREFIX = "OUTCOME "
#: A run that was created but whose supervisor never reported a pid after this long is dead.
START_GRACE_SECONDS = 120.0
#: After a cancel, how long the runner gets between SIGTERM and SIGKILL.
KILL_GRACE_SECONDS = 10.0


class LocalRunError(Exception):
    """Base class of the store's errors."""


class RunNotFound(LocalRunError):
    pass


class RunNameTaken(LocalRunError):
    def __init__(self, name: str, run_id: str):
        super().__init__(f"a local run named {name!r} already exists: {run_id}")
        self.name = name
        self.run_id = run_id


def utcnow() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _age_seconds(iso: str | None) -> float:
    if not iso:
        return 0.0
    try:
        return (datetime.now(timezone.utc) - datetime.fromisoformat(iso)).total_seconds()
    except ValueError:
        return 0.0


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _read_json(path: Path) -> dict:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _name_key(name: str) -> str:
    return hashlib.sha256(name.encode("utf-8")).hexdigest()


def _process_alive(pid: int | None, marker: str | None = None) -> bool:
    """True when pid is a live (not zombie) process; with marker, its command line must contain it."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path(f"/proc/{pid}")
    if not proc.exists():
        return True  # no procfs: trust kill(0)
    try:
        stat = (proc / "stat").read_text()
        if stat.rsplit(")", 1)[-1].split()[0] == "Z":
            return False
        if marker is not None:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            return marker in cmdline
    except OSError:
        return False
    return True


def tail_text(path: Path, max_lines: int = 20, max_bytes: int = 65536) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            data = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-max_lines:])


def parse_outcome(log_path: Path) -> dict | None:
    """The JSON of the runner's last ``OUTCOME {json}`` line, or None."""
    text = tail_text(log_path, max_lines=400, max_bytes=262144)
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith(OUTCOME_PREFIX):
            try:
                value = json.loads(line[len(OUTCOME_PREFIX):])
            except json.JSONDecodeError:
                return None
            return value if isinstance(value, dict) else {"value": value}
    return None


class LocalRunStore:
    """The on-disk store of local runs under one directory."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser().resolve()

    # -- paths -------------------------------------------------------------------------------
    def run_dir(self, run_id: str) -> Path:
        if not run_id or "/" in run_id or run_id.startswith("."):
            raise RunNotFound(f"invalid local run id {run_id!r}")
        return self.root / "runs" / run_id

    def _record_path(self, run_id: str) -> Path:
        return self.run_dir(run_id) / "record.json"

    @contextlib.contextmanager
    def _locked(self, run_id: str) -> Iterator[Path]:
        run_dir = self.run_dir(run_id)
        if not (run_dir / "record.json").exists():
            raise RunNotFound(f"no local run {run_id!r} under {self.root}")
        with open(run_dir / "lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield run_dir
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def mutate(self, run_id: str, fn: Callable[[dict], dict | None]) -> dict:
        """Apply fn to the record under the lock and store the result (fn may change it in place)."""
        with self._locked(run_id) as run_dir:
            record = _read_json(run_dir / "record.json")
            new = fn(record)
            record = new if new is not None else record
            record["updated_at"] = utcnow()
            _write_json_atomic(run_dir / "record.json", record)
            return record

    # -- create / start ----------------------------------------------------------------------
    def create_run(self, display_name: str, command: list[str], *, pipeline_package: str = "",
                   params: dict | None = None) -> dict:
        """Write a PENDING record and claim the display name; raises RunNameTaken if it is held."""
        run_id = str(uuid.uuid4())
        run_dir = self.run_dir(run_id)
        run_dir.mkdir(parents=True, exist_ok=False)
        (self.root / "names").mkdir(parents=True, exist_ok=True)
        record = {
            "run_id": run_id,
            "display_name": display_name,
            "state": PENDING,
            "created_at": utcnow(),
            "started_at": None,
            "finished_at": None,
            "error": None,
            "outputs": {},
            "exit_code": None,
            "command": list(command),
            "pipeline_package": pipeline_package,
            "params": dict(params or {}),
            "log_path": str(run_dir / "run.log"),
            "host": socket.gethostname(),
            "supervisor_pid": None,
            "runner_pid": None,
            "cancel_requested": False,
        }
        _write_json_atomic(run_dir / "record.json", record)
        # Claim the name atomically: link() of a complete file fails if the name is taken.
        name_file = self.root / "names" / _name_key(display_name)
        tmp = name_file.with_name(f".{run_id}.tmp")
        tmp.write_text(run_id)
        try:
            os.link(tmp, name_file)
        except FileExistsError:
            existing = name_file.read_text().strip()
            (run_dir / "record.json").unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                run_dir.rmdir()
            raise RunNameTaken(display_name, existing) from None
        finally:
            tmp.unlink(missing_ok=True)
        return record

    def start(self, run_id: str, env: dict | None = None, python: str | None = None) -> dict:
        """Start the detached supervisor of a PENDING run; returns the record once its pid is known."""
        run_dir = self.run_dir(run_id)
        cmd = [python or sys.executable, "-m", "airflow_kfp_provider.local_runs", "supervise", str(run_dir)]
        with open(run_dir / "supervisor.log", "ab") as log:
            # The child forks the real supervisor into its own session and exits at once, so no
            # zombie is left behind in the (long-lived) Airflow process that called us.
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    env={**os.environ, **(env or {})}, cwd=run_dir, close_fds=True)
            rc = proc.wait(timeout=60)
        if rc != 0:
            detail = tail_text(run_dir / "supervisor.log", max_lines=10)
            self.mutate(run_id, lambda r: r.update(state=FAILED, finished_at=utcnow(),
                                                    error=f"could not start the local runner: {detail}"))
        return self.get(run_id)

    # -- read --------------------------------------------------------------------------------
    def get(self, run_id: str) -> dict:
        path = self._record_path(run_id)
        if not path.exists():
            raise RunNotFound(f"no local run {run_id!r} under {self.root}")
        record = _read_json(path)
        if record.get("state") not in TERMINAL and self._lost(record):
            record = self.mutate(run_id, self._mark_lost)
        return record

    def _lost(self, record: dict) -> bool:
        """A non-final run whose supervisor is gone (machine restart, kill -9) will never finish."""
        if record.get("host") != socket.gethostname():
            return False  # another machine's run: we cannot look at its processes
        pid = record.get("supervisor_pid")
        if pid is None:
            return _age_seconds(record.get("created_at")) > START_GRACE_SECONDS
        return not _process_alive(pid, marker=record["run_id"])

    def _mark_lost(self, record: dict) -> None:
        if record.get("state") in TERMINAL or not self._lost(record):
            return  # the supervisor finished (or started) while we were waiting for the lock
        if record.get("cancel_requested"):
            record.update(state=CANCELED, finished_at=utcnow(), error="canceled on request")
            return
        record.update(
            state=FAILED,
            finished_at=utcnow(),
            error=("the local runner process is gone without recording a result (machine or process "
                   f"restart?); its log is {record.get('log_path')}. Clear the Airflow task to run the "
                   "pipeline again."),
        )

    def find_by_name(self, display_name: str) -> dict | None:
        name_file = self.root / "names" / _name_key(display_name)
        try:
            run_id = name_file.read_text().strip()
        except FileNotFoundError:
            return None
        try:
            return self.get(run_id)
        except RunNotFound:
            return None

    def list_runs(self) -> list[dict]:
        runs = []
        for path in sorted((self.root / "runs").glob("*/record.json")):
            with contextlib.suppress(OSError, ValueError):
                runs.append(_read_json(path))
        return sorted(runs, key=lambda r: r.get("created_at") or "")

    # -- cancel ------------------------------------------------------------------------------
    def request_cancel(self, run_id: str) -> dict:
        """Ask the supervisor to stop the run (SIGTERM to its runner); returns the record."""
        def mark(record: dict) -> None:
            if record.get("state") in TERMINAL:
                return
            record["cancel_requested"] = True
            record["state"] = CANCELING

        record = self.mutate(run_id, mark)
        if record.get("state") in TERMINAL:
            return record
        pid = record.get("supervisor_pid")
        if _process_alive(pid, marker=run_id):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        else:
            runner = record.get("runner_pid")
            if runner and _process_alive(runner):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(runner, signal.SIGKILL)
            record = self.mutate(run_id, lambda r: None if r.get("state") in TERMINAL else r.update(
                state=CANCELED, finished_at=utcnow(), error="canceled on request"))
        return record


# -- the supervisor process ------------------------------------------------------------------
def _supervise(run_dir: Path) -> int:
    store = LocalRunStore(run_dir.parent.parent)
    run_id = run_dir.name

    pid = os.fork()
    if pid > 0:  # the short-lived parent: record the supervisor's pid, then let start() return
        store.mutate(run_id, lambda r: r.update(supervisor_pid=pid))
        os._exit(0)

    os.setsid()
    # Stay identifiable for liveness checks: our command line contains the run directory (run id).
    state: dict[str, Any] = {"child": None, "canceled": False}

    def _kill_runner(*_: Any) -> None:
        state["canceled"] = True
        child = state["child"]
        if child is None or child.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGTERM)

        def _hard_kill() -> None:
            time.sleep(KILL_GRACE_SECONDS)
            if child.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGKILL)

        threading.Thread(target=_hard_kill, daemon=True).start()

    signal.signal(signal.SIGTERM, _kill_runner)
    signal.signal(signal.SIGINT, _kill_runner)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)

    record = store.get(run_id)
    if record.get("cancel_requested") or record.get("state") in TERMINAL:
        store.mutate(run_id, lambda r: None if r.get("state") in TERMINAL else r.update(
            state=CANCELED, finished_at=utcnow(), error="canceled before it started"))
        return 0

    log_path = Path(record["log_path"])
    with open(log_path, "ab") as log:
        log.write(f"[{utcnow()}] local run {run_id} ({record['display_name']}): "
                  f"{' '.join(record['command'])}\n".encode())
        log.flush()
        try:
            child = subprocess.Popen(record["command"], stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT, cwd=run_dir, start_new_session=True)
        except OSError as exc:
            store.mutate(run_id, lambda r: r.update(state=FAILED, finished_at=utcnow(),
                                                    error=f"could not start the runner: {exc}"))
            return 1
        state["child"] = child
        store.mutate(run_id, lambda r: r.update(state=CANCELING if r.get("cancel_requested") else RUNNING,
                                                started_at=utcnow(), runner_pid=child.pid))
        if store.get(run_id).get("cancel_requested"):
            _kill_runner()
        rc = child.wait()
        log.write(f"[{utcnow()}] runner exited with code {rc}\n".encode())

    outcome = parse_outcome(log_path)

    def finish(r: dict) -> None:
        r.update(finished_at=utcnow(), exit_code=rc)
        if outcome is not None:
            r["outputs"] = {"outcome": outcome}
        if state["canceled"] or r.get("cancel_requested"):
            r.update(state=CANCELED, error="canceled on request")
        elif rc == 0:
            r.update(state=SUCCEEDED, error=None)
        else:
            reported = (outcome or {}).get("error")
            r.update(state=FAILED, error=(f"{reported}\n" if reported else "")
                     + f"the pipeline runner exited with code {rc}; last lines of {log_path}:\n"
                     + tail_text(log_path, max_lines=15))

    store.mutate(run_id, finish)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m airflow_kfp_provider.local_runs",
                                     description="Local KFP run records (the Airflow hook's local backend).")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sup = sub.add_parser("supervise", help="internal: run one recorded run (started by the hook)")
    sup.add_argument("run_dir")
    lst = sub.add_parser("list", help="list the runs under a runs directory")
    lst.add_argument("runs_dir")
    show = sub.add_parser("show", help="print one run record")
    show.add_argument("runs_dir")
    show.add_argument("run_id")
    args = parser.parse_args(argv)

    if args.cmd == "supervise":
        return _supervise(Path(args.run_dir).resolve())
    store = LocalRunStore(args.runs_dir)
    if args.cmd == "list":
        for r in store.list_runs():
            print(f"{r['run_id']}  {r['state']:<10} {r.get('created_at')}  {r['display_name']}")
        return 0
    print(json.dumps(store.get(args.run_id), indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
