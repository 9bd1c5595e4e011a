"""The serving state file is never reset silently, and a worker that cannot start stops gunicorn fast.

An empty, non-SQLite, truncated, damaged or foreign state file is refused by the store (a message
naming the file and what to do) and left byte-for-byte as it was; gunicorn's master refuses it before
binding the port; a worker that fails to boot (also after it loaded the ONNX model) makes gunicorn
exit within seconds with "Worker failed to boot" and the cause in its log. A new state is created
whole, once, even by several processes at once.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

from serving.store import FeedbackProvenance, SQLiteStore, StateFileError, open_store
from serving.store.sqlite import check_state_file
from stack.procs import port_in_use, stop_group
from tests.serving.conftest import launch_gunicorn, start_gunicorn, stop_gunicorn
from tests.serving.store_procs import start_store

pytestmark = pytest.mark.faults

FEEDBACK_ROWS = 562


# -- gunicorn app factories of the worker-path tests (run inside a gunicorn worker) -----------------


def app_on_damaged_state():
    """A worker whose state file is damaged while the master's check saw a good one."""
    from serving.app import create_app

    return create_app({"SERVING_DB_PATH": os.environ["TEST_WORKER_DB_PATH"]})


def app_that_fails_after_loading():
    """A worker that loads the champion (its own onnxruntime session) and then fails to boot."""
    from serving.app import create_app

    app = create_app()
    assert app.extensions["serving"].manager.active.model.backend == "onnx"
    raise RuntimeError("boot failure injected by the test, after the ONNX model was loaded")


# -- helpers -----------------------------------------------------------------------------------------


def _real_state(path: Path) -> Path:
    """A state file as serving leaves it: a served record, a drift window and 562 feedback rows."""
    store = SQLiteStore(path, window_size=5000, checkpoint_seconds=0, prune_every=10**9)
    record, _ = store.activate("iris", "3", "run-3")
    rng = np.random.default_rng(0)
    store.add_rows(record.epoch, rng.normal(size=(3000, 4)))
    store.add_feedback(
        "iris",
        "3",
        rng.normal(size=(FEEDBACK_ROWS, 4)),
        [1] * FEEDBACK_ROWS,
        FeedbackProvenance("feedback", "127.0.0.1", "labeller"),
    )
    store.close()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return path


def _empty(path):
    path.write_bytes(b"")


def _garbage(path):
    path.write_bytes(os.urandom(20_000))


def _truncated(path):
    data = _real_state(path).read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _damaged_pages(path):
    data = _real_state(path).read_bytes()
    middle = len(data) // 2 // 4096 * 4096
    path.write_bytes(data[:middle] + os.urandom(3 * 4096) + data[middle + 3 * 4096 :])


def _foreign(path):
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT)")
        conn.execute("INSERT INTO users (email) VALUES ('a@example.org')")


DAMAGE = {
    "empty": (_empty, "is empty (0 bytes)"),
    "garbage": (_garbage, "is not an SQLite database"),
    "truncated": (_truncated, "is truncated"),
    "damaged": (_damaged_pages, "is damaged"),
    "foreign": (_foreign, "is another application's SQLite database"),
}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def _assert_message(message: str, path: Path, problem: str) -> None:
    assert f"serving state file {path} {problem}" in message, message
    assert "restore it from a backup" in message.lower() and "move it aside" in message, message
    assert "never deletes" in message


# -- the store ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_state_file_is_refused_and_left_unchanged(tmp_path, damage):
    make, problem = DAMAGE[damage]
    path = tmp_path / "serving.sqlite3"
    make(path)
    before, files = _digest(path), _listing(tmp_path)
    for _ in range(2):  # a retry (a respawned worker) is refused the same way
        with pytest.raises(StateFileError) as caught:
            open_store(f"sqlite:///{path}", 100)
        _assert_message(str(caught.value), path, problem)
        assert caught.value.path == str(path)
    assert _digest(path) == before and _listing(tmp_path) == files  # no byte changed, no file added


def test_a_good_state_file_opens_with_every_row(tmp_path):
    path = _real_state(tmp_path / "serving.sqlite3")
    assert check_state_file(path) is True
    store = SQLiteStore(path, window_size=100)
    assert store.count_feedback("iris") == FEEDBACK_ROWS and store.served("iris").version == "3"
    store.close()


def test_changes_of_a_moved_state_file_are_not_replayed_into_a_new_one(tmp_path):
    """The state file was moved away but its -wal stayed: SQLite would replay those pages into a
    new file. Refused, with what to do."""
    path = tmp_path / "serving.sqlite3"
    store = SQLiteStore(path, window_size=100, checkpoint_seconds=0)
    store.add_feedback("iris", "1", np.ones((3, 4)), [0, 1, 2])
    wal = Path(f"{path}-wal")
    assert wal.stat().st_size > 0
    path.rename(tmp_path / "moved.sqlite3")  # while the store still holds the WAL open
    for attempt in (lambda: check_state_file(path), lambda: SQLiteStore(path, window_size=100)):
        with pytest.raises(StateFileError) as caught:  # the gunicorn master's check and a worker's open
            attempt()
        assert f"{wal.name} next to it" in str(caught.value) and "Move" in caught.value.advice
    assert not path.exists()
    store.close()


@pytest.mark.parametrize("hard_links", [True, False], ids=["hard link", "no hard links"])
def test_several_processes_creating_a_new_state_agree_on_one_file(tmp_path, hard_links):
    path = tmp_path / "state" / "serving.sqlite3"
    # spawn, not fork: a child forked from this many-threaded process (servers, model loaders of earlier
    # tests) can hang on a lock some thread held at the fork, as gunicorn's workers never do
    ctx = mp.get_context("spawn")
    n = 8
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=start_store, args=(path, barrier, results, hard_links), daemon=True) for _ in range(n)]
    try:
        for p in procs:
            p.start()
        outcomes = [results.get(timeout=120) for _ in range(n)]
        for p in procs:
            p.join(30)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
    assert all(kind == "ok" for kind, _ in outcomes), outcomes
    store = SQLiteStore(path, window_size=100)
    rows = {int(r.features[0]) for r in store.iter_feedback_records("iris")}
    assert rows == {pid for _, pid in outcomes}  # every process wrote into the same file
    store.close()
    assert [p for p in _listing(path.parent) if p.endswith(".new")] == []  # the losers' files are gone


# -- gunicorn ----------------------------------------------------------------------------------------


def _launch(
    state_dir: Path,
    app: str = "serving.app:create_app()",
    extra_env: dict | None = None,
    mlflow_tracking_uri: str = "http://127.0.0.1:9",
    model_name: str = "unused",
):
    server = launch_gunicorn(state_dir, model_name, mlflow_tracking_uri, extra_env=extra_env, app=app)
    return server.proc, int(server.url.rsplit(":", 1)[1]), server.log_path


def _wait_exit(proc, timeout: float) -> float:
    t0 = time.monotonic()
    try:
        proc.wait(timeout=timeout)
    except Exception:  # noqa: BLE001
        stop_group(proc.pid)
        raise
    return time.monotonic() - t0


@pytest.mark.parametrize("damage", ["empty", "garbage", "truncated", "foreign"])
def test_gunicorn_refuses_a_damaged_state_file_at_once(tmp_path, damage):
    make, problem = DAMAGE[damage]
    path = tmp_path / "serving.sqlite3"
    make(path)
    before = _digest(path)
    proc, port, log_path = _launch(tmp_path)
    elapsed = _wait_exit(proc, timeout=10)
    log = log_path.read_text()
    assert proc.returncode != 0
    assert "Cannot start serving: " in log
    _assert_message(log, path, problem)
    assert "Booting worker" not in log and not port_in_use(port)  # refused before binding the port
    assert _digest(path) == before
    print(f"{damage}: gunicorn refused the state file in {elapsed:.2f} s")


@pytest.mark.parametrize("case", ["damaged state", "fails after loading the ONNX model"])
def test_a_worker_that_cannot_start_stops_gunicorn_within_seconds(tmp_path, mlflow_server, model_name, champion, case):
    """The master's check passed, a worker fails to boot: gunicorn exits "Worker failed to boot" with
    the cause in its log, within seconds (before: its workers hung in onnxruntime's exit handlers and
    the master kept the port)."""
    env = {}
    if case == "damaged state":
        bad = tmp_path / "bad.sqlite3"
        _truncated(bad)
        env["TEST_WORKER_DB_PATH"] = str(bad)
        app, cause = "tests.serving.test_state_file:app_on_damaged_state()", f"serving state file {bad} is truncated"
    else:
        app, cause = (
            "tests.serving.test_state_file:app_that_fails_after_loading()",
            "boot failure injected by the test",
        )
    proc, port, log_path = _launch(tmp_path, app, env, mlflow_server, model_name)
    try:
        deadline = time.monotonic() + 180  # the master's preload (mlflow, pandas, scipy) comes first
        while "Booting worker" not in log_path.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.05)
        elapsed = _wait_exit(proc, timeout=60)
    finally:
        stop_group(proc.pid)
    log = log_path.read_text()
    assert "Worker failed to boot" in log and cause in log, log[-3000:]
    # 3 is gunicorn's WORKER_BOOT_ERROR; when the second worker fails while the master halts for the
    # first, gunicorn's halt raises HaltServer again and the master exits 1 with that traceback (a known
    # gunicorn race, e.g. benoitc/gunicorn#2393): either way it stops, says why, and frees the port
    assert proc.returncode in (1, 3) and not port_in_use(port), (proc.returncode, log[-3000:])
    print(f"{case}: gunicorn exited {elapsed:.1f} s after its first worker booted")
    assert elapsed < 15, log[-3000:]


def test_a_new_state_starts_and_the_master_holds_no_onnxruntime(tmp_path, mlflow_server, model_name, champion):
    """No state file yet: created whole, and serving starts. onnxruntime lives in the workers only
    (imported before the fork, its exit handlers deadlock in every worker)."""
    server = start_gunicorn(tmp_path, model_name, mlflow_server, workers=2)
    try:
        assert server.get("/health").json()["status"] == "ok"
        assert server.post("/predict", json={"features": [5.1, 3.5, 1.4, 0.2]}).status_code == 200
        assert check_state_file(tmp_path / "serving.sqlite3") is True
        master_maps = Path(f"/proc/{server.proc.pid}/maps").read_text()
        assert "onnxruntime" not in master_maps
        worker = server.get("/health").headers["X-Serving-Worker"]
        assert "onnxruntime" in Path(f"/proc/{worker}/maps").read_text()
    finally:
        stop_gunicorn(server)
