"""Run records and detached runner processes for the ``local`` KFP backend.

A local run executes a runner command (default ``python -m airflow_kfp_provider.local_runner --yaml PATH
--param k=v ...``) in a process detached from Airflow: a small supervisor (``python -m
airflow_kfp_provider.local_runs supervise RUN_DIR``, started in its own session) starts the runner in
a session of its own, waits for it and writes the result. Neither the Airflow worker that submitted the
run nor the triggerer that watches it has to stay alive, and the files survive restarts of all of them.

Layout under the runs directory (``runs_dir``); every file has ONE writer, replaced atomically, so no
lock is needed::

    runs/<run_id>/record.json   what was asked: name, command, parameters, supervisor pid (the submitter)
    runs/<run_id>/status.json   how it went: state, times, exit code, error, outputs (the supervisor)
    runs/<run_id>/outcome.json  the runner's result, a JSON object (the runner, via $KFP_RUN_OUTCOME_FILE)
    runs/<run_id>/cancel        present once a cancel was requested
    runs/<run_id>/run.log       everything the runner printed (the pipeline's log)
    names/<sha256 of name>      the run id that holds a display name (created atomically, first wins)

Processes are found and stopped with psutil (pid plus creation time, so a reused pid is never mistaken
for the run). States are those of :mod:`airflow_kfp_provider.states`.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from airflow_kfp_provider.states import RunState, is_terminal

log = logging.getLogger(__name__)

#: The environment variable through which a runner gets the path of its outcome file.
OUTCOME_FILE_ENV = "KFP_RUN_OUTCOME_FILE"
OUTCOME_FILE = "outcome.json"
#: A run that was created but whose supervisor never got a pid after this long is dead.
START_GRACE_SECONDS = 120.0
#: After a cancel, how long the runner gets between SIGTERM and SIGKILL.
KILL_GRACE_SECONDS = 10.0


class LocalRunError(Exception):
    """Base class of the store's errors."""


class RunNotFound(LocalRunError):
    pass


class RunNameTaken(LocalRunError):
    def __init__(self, name: str, run_id: str) -> None:
        super().__init__(f"a local run named {name!r} already exists: {run_id}")
        self.name = name
        self.run_id = run_id


def utcnow() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _age_seconds(iso: str | None) -> float:
    if not iso:
        return 0.0
    try:
        return (datetime.now(UTC) - datetime.fromisoformat(iso)).total_seconds()
    except ValueError:
        return 0.0


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    return data if isinstance(data, dict) else {"value": data}


def _name_key(name: str) -> str:
    return hashlib.sha256(name.encode("utf-8")).hexdigest()


def find_process(pid: int | None, create_time: float | None = None) -> psutil.Process | None:
    """The live (not zombie) process with this pid and, when given, this creation time; else None."""
    if not pid:
        return None
    try:
        proc = psutil.Process(pid)
        if create_time is not None and abs(proc.create_time() - create_time) > 0.01:
            return None  # the pid was reused by another process
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc
    except psutil.NoSuchProcess:
        return None
    except psutil.AccessDenied:  # it exists, but belongs to someone else
        return psutil.Process(pid)


def stop_tree(proc: psutil.Process, grace: float = KILL_GRACE_SECONDS) -> None:
    """SIGTERM a process and all its descendants, SIGKILL whatever is left after ``grace`` seconds."""
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()


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


def write_outcome(path: str | os.PathLike[str] | None, outcome: dict[str, Any]) -> None:
    """The runner's side of :func:`read_outcome`: write `outcome` atomically to the file named by
    ``$KFP_RUN_OUTCOME_FILE`` (passed in as `path`); nothing when no path is given."""
    if path:
        _write_json_atomic(Path(path), outcome)


def read_outcome(run_dir: Path) -> dict[str, Any] | None:
    """The JSON object the runner wrote to its outcome file, or None."""
    try:
        return _read_json(run_dir / OUTCOME_FILE)
    except (OSError, ValueError):
        return None


class LocalRunStore:
    """The on-disk store of local runs under one directory."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().resolve()

    # -- paths -------------------------------------------------------------------------------
    def run_dir(self, run_id: str) -> Path:
        if not run_id or "/" in run_id or run_id.startswith("."):
            raise RunNotFound(f"invalid local run id {run_id!r}")
        return self.root / "runs" / run_id

    # -- create / start ----------------------------------------------------------------------
    def create_run(
        self, display_name: str, command: list[str], *, pipeline_package: str = "", params: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Write a PENDING record and claim the display name; raises RunNameTaken if it is held."""
        run_id = str(uuid.uuid4())
        run_dir = self.run_dir(run_id)
        run_dir.mkdir(parents=True, exist_ok=False)
        (self.root / "names").mkdir(parents=True, exist_ok=True)
        record: dict[str, Any] = {
            "run_id": run_id,
            "display_name": display_name,
            "created_at": utcnow(),
            "command": list(command),
            "pipeline_package": pipeline_package,
            "params": dict(params or {}),
            "log_path": str(run_dir / "run.log"),
            "host": socket.gethostname(),
            "supervisor_pid": None,
            "supervisor_create_time": None,
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
        return self.get(run_id)

    def start(self, run_id: str, env: dict[str, str] | None = None, python: str | None = None) -> dict[str, Any]:
        """Start the detached supervisor of a PENDING run (its own session); returns the run."""
        run_dir = self.run_dir(run_id)
        record = _read_json(run_dir / "record.json")
        cmd = [python or sys.executable, "-m", "airflow_kfp_provider.local_runs", "supervise", str(run_dir)]
        try:
            with open(run_dir / "supervisor.log", "ab") as out:
                proc = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, **(env or {})},
                    cwd=run_dir,
                    close_fds=True,
                    start_new_session=True,
                )
        except OSError as exc:
            self._finish(run_dir, RunState.FAILED, f"could not start the local runner's supervisor: {exc}")
            return self.get(run_id)
        try:
            create_time: float | None = psutil.Process(proc.pid).create_time()
        except psutil.NoSuchProcess:  # already gone: its status file tells how it went
            create_time = None
        record.update(supervisor_pid=proc.pid, supervisor_create_time=create_time)
        _write_json_atomic(run_dir / "record.json", record)
        return self.get(run_id)

    # -- read --------------------------------------------------------------------------------
    def get(self, run_id: str) -> dict[str, Any]:
        """The run: its record merged with its status; a run whose supervisor is gone is finished here."""
        run_dir = self.run_dir(run_id)
        try:
            record = _read_json(run_dir / "record.json")
        except FileNotFoundError:
            raise RunNotFound(f"no local run {run_id!r} under {self.root}") from None
        status = self._status(run_dir)
        canceling = (run_dir / "cancel").exists()
        if not is_terminal(status["state"]) and self._lost(record):
            status = self._status(run_dir)  # the supervisor may have finished just now
            if not is_terminal(status["state"]):
                if canceling:
                    status = self._finish(run_dir, RunState.CANCELED, "canceled on request")
                else:
                    status = self._finish(
                        run_dir,
                        RunState.FAILED,
                        "the local runner process is gone without recording a result (machine or process "
                        f"restart?); its log is {record.get('log_path')}. Clear the Airflow task to run the "
                        "pipeline again.",
                    )
        if canceling and not is_terminal(status["state"]):
            status["state"] = RunState.CANCELING
        return {**record, **status, "cancel_requested": canceling}

    @staticmethod
    def _status(run_dir: Path) -> dict[str, Any]:
        try:
            return _read_json(run_dir / "status.json")
        except (FileNotFoundError, ValueError):
            return {
                "state": RunState.PENDING,
                "started_at": None,
                "finished_at": None,
                "error": None,
                "outputs": {},
                "exit_code": None,
                "runner_pid": None,
            }

    @staticmethod
    def _finish(run_dir: Path, state: str, error: str | None, **fields: Any) -> dict[str, Any]:
        status = LocalRunStore._status(run_dir)
        status.update(state=state, error=error, finished_at=utcnow(), **fields)
        _write_json_atomic(run_dir / "status.json", status)
        return status

    def _lost(self, record: dict[str, Any]) -> bool:
        """A non-final run whose supervisor is gone (machine restart, kill -9) will never finish."""
        if record.get("host") != socket.gethostname():
            return False  # another machine's run: we cannot look at its processes
        pid = record.get("supervisor_pid")
        if pid is None:
            return _age_seconds(record.get("created_at")) > START_GRACE_SECONDS
        return find_process(pid, record.get("supervisor_create_time")) is None

    def find_by_name(self, display_name: str) -> dict[str, Any] | None:
        name_file = self.root / "names" / _name_key(display_name)
        try:
            run_id = name_file.read_text().strip()
        except FileNotFoundError:
            return None
        try:
            return self.get(run_id)
        except RunNotFound:
            return None

    def list_runs(self) -> list[dict[str, Any]]:
        runs = []
        for path in sorted((self.root / "runs").glob("*/record.json")):
            with contextlib.suppress(OSError, ValueError, RunNotFound):
                runs.append(self.get(path.parent.name))
        return sorted(runs, key=lambda r: r.get("created_at") or "")

    # -- cancel ------------------------------------------------------------------------------
    def request_cancel(self, run_id: str) -> dict[str, Any]:
        """Ask the supervisor to stop the run (it terminates the runner); returns the run."""
        run = self.get(run_id)
        if is_terminal(run["state"]):
            return run
        run_dir = self.run_dir(run_id)
        (run_dir / "cancel").touch()
        supervisor = find_process(run.get("supervisor_pid"), run.get("supervisor_create_time"))
        if supervisor is not None:
            with contextlib.suppress(psutil.NoSuchProcess):
                supervisor.terminate()  # its handler stops the runner and records CANCELED
        else:
            runner = find_process(run.get("runner_pid"))
            if runner is not None:
                stop_tree(runner, grace=0)
            self._finish(run_dir, RunState.CANCELED, "canceled on request")
        return self.get(run_id)


# -- the supervisor process ------------------------------------------------------------------
def _supervise(run_dir: Path) -> int:
    record = _read_json(run_dir / "record.json")
    run_id = record["run_id"]
    child: subprocess.Popen[bytes] | None = None
    canceled = threading.Event()

    def _stop_runner(*_: Any) -> None:
        canceled.set()
        if child is not None and child.poll() is None:
            with contextlib.suppress(psutil.NoSuchProcess):
                threading.Thread(target=stop_tree, args=(psutil.Process(child.pid),), daemon=True).start()

    signal.signal(signal.SIGTERM, _stop_runner)
    signal.signal(signal.SIGINT, _stop_runner)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)

    if (run_dir / "cancel").exists():
        LocalRunStore._finish(run_dir, RunState.CANCELED, "canceled before it started")
        return 0
    log_path = Path(record["log_path"])
    outcome_path = run_dir / OUTCOME_FILE
    env = {**os.environ, OUTCOME_FILE_ENV: str(outcome_path)}
    with open(log_path, "ab") as out:
        out.write(
            f"[{utcnow()}] local run {run_id} ({record['display_name']}): {' '.join(record['command'])}\n".encode()
        )
        out.flush()
        try:
            child = subprocess.Popen(
                record["command"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=run_dir,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            LocalRunStore._finish(run_dir, RunState.FAILED, f"could not start the runner: {exc}")
            return 1
        _write_json_atomic(
            run_dir / "status.json",
            {
                "state": RunState.RUNNING,
                "started_at": utcnow(),
                "finished_at": None,
                "error": None,
                "outputs": {},
                "exit_code": None,
                "runner_pid": child.pid,
            },
        )
        if (run_dir / "cancel").exists():
            _stop_runner()
        rc = child.wait()
        out.write(f"[{utcnow()}] runner exited with code {rc}\n".encode())

    outcome = read_outcome(run_dir)
    outputs = {"outcome": outcome} if outcome is not None else {}
    if canceled.is_set() or (run_dir / "cancel").exists():
        LocalRunStore._finish(run_dir, RunState.CANCELED, "canceled on request", exit_code=rc, outputs=outputs)
    elif rc == 0:
        LocalRunStore._finish(run_dir, RunState.SUCCEEDED, None, exit_code=rc, outputs=outputs)
    else:
        reported = (outcome or {}).get("error")
        error = (
            (f"{reported}\n" if reported else "")
            + f"the pipeline runner exited with code {rc}; last lines of {log_path}:\n"
            + tail_text(log_path, max_lines=15)
        )
        LocalRunStore._finish(run_dir, RunState.FAILED, error, exit_code=rc, outputs=outputs)
    return 0


def main(argv: list[str] | None = None, out: Callable[[str], None] = print) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m airflow_kfp_provider.local_runs",
        description="Local KFP run records (the Airflow hook's local backend).",
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    sup = sub.add_parser("supervise", help="internal: run one recorded run (started by the hook)")
    sup.add_argument("run_dir")
    lst = sub.add_parser("list", help="list the runs under a runs directory")
    lst.add_argument("runs_dir")
    show = sub.add_parser("show", help="print one run")
    show.add_argument("runs_dir")
    show.add_argument("run_id")
    args = parser.parse_args(argv)

    if args.cmd == "supervise":
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return _supervise(Path(args.run_dir).resolve())
    store = LocalRunStore(args.runs_dir)
    if args.cmd == "list":
        for r in store.list_runs():
            out(f"{r['run_id']}  {r['state']:<10} {r.get('created_at')}  {r['display_name']}")
        return 0
    out(json.dumps(store.get(args.run_id), indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
