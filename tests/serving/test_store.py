"""The state store contract, run against both backends: SQLite (the embedded default) and a real
PostgreSQL server (several replicas). Backend-specific behaviour (SQLite file migration, PostgreSQL
concurrency and outages) is tested below the contract."""

from __future__ import annotations

import multiprocessing as mp

import numpy as np
import pytest

from serving.store import FeedbackProvenance, SQLiteStore, StoreUnavailable, open_store
from serving.store.base import DriftCounts, WindowReset
from tests.serving.store_procs import start_replica, write_rows


def feedback_pairs(store, model_name):
    """(features, label) of every feedback row, oldest first."""
    return [(r.features, r.label) for r in store.iter_feedback_records(model_name)]


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 's.sqlite3'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture(autouse=True)
def _close_stores(monkeypatch):
    """Close every store a test opened (a PostgreSQL store holds a pool with a worker thread)."""
    opened, really_open = [], open_store

    def opening(*args, **kwargs):
        store = really_open(*args, **kwargs)
        opened.append(store)
        return store

    monkeypatch.setitem(globals(), "open_store", opening)
    yield
    for store in opened:
        store.close()


def test_window_is_shared_by_processes_and_trimmed(store_url):
    store = open_store(store_url, window_size=50, prune_every=7)
    record, started = store.activate("m", "1", "run1")
    assert started and record.generation == 1
    ctx = mp.get_context("spawn")  # a fork of this many-threaded process can hang
    procs = [ctx.Process(target=write_rows, args=(store_url, record.epoch, k * 1000, 60)) for k in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    window = store.window(record.epoch, 50)
    assert window.shape == (50, 2)
    assert store.window(record.epoch, 10_000).shape[0] == 120  # nothing trimmed by the writers (window 1000)
    # a second store object (another worker, or the app after a restart) sees the same rows
    again = open_store(store_url, window_size=50)
    assert np.array_equal(again.window(record.epoch, 50), window)
    store.prune(record.epoch)
    assert store.window(record.epoch, 10_000).shape[0] == 50
    assert np.array_equal(store.window(record.epoch, 50), window)  # the newest 50 were kept


def test_activation_restarts_the_window_only_for_a_new_version(store_url):
    store = open_store(store_url, window_size=10)
    r1, _ = store.activate("m", "1", "a")
    store.add_rows(r1.epoch, np.ones((3, 4)))
    same, started = store.activate("m", "1", "a")
    assert not started and same.epoch == r1.epoch and same.generation == r1.generation
    assert store.window(r1.epoch, 10).shape == (3, 4)
    r2, started = store.activate("m", "2", "b")
    assert started and r2.epoch != r1.epoch and r2.generation == r1.generation + 1
    assert store.window(r2.epoch, 10).shape[0] == 0
    assert store.window(r1.epoch, 10).shape[0] == 0  # old rows dropped
    assert store.generation("m") == r2.generation and store.generation("other") is None
    served = store.served("m")
    assert (served.version, served.run_id, served.epoch) == ("2", "b", r2.epoch)
    assert served.epoch_started_at >= r1.epoch_started_at


def test_rows_enter_the_window_only_while_the_record_is_at_the_predicting_generation(store_url):
    store = open_store(store_url, window_size=10, prune_every=3)
    assert store.add_rows_if_current("m", None, 1, np.ones((1, 2))) is False  # no record yet
    r1, _ = store.activate("m", "1", "a")
    assert store.add_rows_if_current("m", r1.generation, r1.epoch, np.array([[1.0, 2.0]])) is True
    assert store.add_rows_if_current("m", r1.generation, r1.epoch, np.array([[3.0, 4.0], [5.0, 6.0]])) is True
    for i in range(12):  # trimmed to the window as add_rows is
        assert store.add_rows_if_current("m", r1.generation, r1.epoch, np.array([[float(i), 0.0]]))
    assert store.window(r1.epoch, 100).shape[0] <= 12 and store.window(r1.epoch, 10)[-1].tolist() == [11.0, 0.0]
    r2, _ = store.activate("m", "2", "b")  # a reload elsewhere: the worker still predicts with generation 1
    assert store.add_rows_if_current("m", r1.generation, r1.epoch, np.array([[7.0, 8.0]])) is False
    assert store.add_rows_if_current("m", r1.generation, r2.epoch, np.array([[7.0, 8.0]] * 3)) is False
    assert store.window(r2.epoch, 10).shape[0] == 0 and store.window(r1.epoch, 10).shape[0] == 0
    assert store.add_rows_if_current("m", r2.generation, r2.epoch, np.array([[9.0, 9.5]])) is True
    assert store.window(r2.epoch, 10).tolist() == [[9.0, 9.5]]


def test_batch_larger_than_window_keeps_the_last_rows(store_url):
    store = open_store(store_url, window_size=5)
    r, _ = store.activate("m", "1", None)
    store.add_rows(r.epoch, np.arange(40, dtype=float).reshape(20, 2))
    w = store.window(r.epoch, 5)
    assert w[:, 0].tolist() == [30.0, 32.0, 34.0, 36.0, 38.0]
    assert store.reset_window(r.epoch) == WindowReset(dropped=5, resets=1)
    assert store.window(r.epoch, 5).shape[0] == 0


def test_window_snapshot_names_its_rows_and_ids_grow_within_an_episode(store_url):
    store = open_store(store_url, window_size=5)
    r, _ = store.activate("m", "1", None)
    empty = store.window_snapshot(r.epoch, 5)
    assert empty.rows.shape[0] == 0 and empty.first_row is None and empty.last_row is None
    store.add_rows(r.epoch, np.arange(16, dtype=float).reshape(8, 2))  # the last 5 are kept
    snap = store.window_snapshot(r.epoch, 5)
    assert snap.rows[:, 0].tolist() == [6.0, 8.0, 10.0, 12.0, 14.0]
    assert snap.first_row is not None and snap.last_row is not None and snap.first_row < snap.last_row
    assert np.array_equal(store.window(r.epoch, 5), snap.rows)
    assert store.window_snapshot(r.epoch, 2).first_row > snap.first_row  # the newest 2 of them
    store.add_rows(r.epoch, np.array([[99.0, 99.0]]))
    newer = store.window_snapshot(r.epoch, 5)
    assert newer.last_row > snap.last_row and newer.first_row > snap.first_row
    # a reset empties the window and starts a new episode (the reset count), in which ids grow again
    assert store.reset_window(r.epoch) == WindowReset(dropped=6, resets=1)
    cleared = store.window_snapshot(r.epoch, 5)
    assert cleared.rows.shape[0] == 0 and cleared.first_row is None and cleared.last_row is None
    store.add_rows(r.epoch, np.array([[1.0, 1.0]]))
    after = store.window_snapshot(r.epoch, 5)
    assert after.first_row == after.last_row and after.rows.tolist() == [[1.0, 1.0]]
    store.add_rows(r.epoch, np.array([[3.0, 3.0]]))
    assert store.window_snapshot(r.epoch, 5).last_row > after.last_row
    assert store.reset_window(r.epoch) == WindowReset(dropped=2, resets=2)
    assert store.reset_window(r.epoch) == WindowReset(dropped=0, resets=3)
    assert store.drift_counts(r.epoch).window_resets == 3
    # a new version: a new epoch, no resets yet
    r2, _ = store.activate("m", "2", None)
    assert store.drift_counts(r2.epoch) == DriftCounts(0, 0, 0)
    assert store.window_snapshot(r2.epoch, 5).first_row is None


def test_drift_counts_count_labelled_rows_of_the_model_and_since_its_activation(store_url):
    import time

    store = open_store(store_url, window_size=5)
    assert store.drift_counts(12345) == DriftCounts(0, 0, 0)  # no such epoch
    r1, _ = store.activate("m", "1", None)
    store.add_feedback("m", "1", np.ones((2, 2)), [0, 1])
    store.add_feedback("other", "1", np.ones((4, 2)), [0, 1, 0, 1])  # another model name
    assert store.drift_counts(r1.epoch) == DriftCounts(0, 2, 2)
    time.sleep(0.02)
    r2, _ = store.activate("m", "2", None)
    assert store.drift_counts(r2.epoch) == DriftCounts(0, 2, 0)  # all labelled before version 2 was served
    store.add_feedback("m", "2", np.ones((3, 2)), [1, 1, 2])
    store.reset_window(r2.epoch)
    assert store.drift_counts(r2.epoch) == DriftCounts(1, 5, 3)
    same, started = store.activate("m", "2", "run-id-only")  # the same version: its activation stays
    assert not started and store.drift_counts(same.epoch) == DriftCounts(1, 5, 3)


def test_feedback_round_trip(store_url):
    store = open_store(store_url, window_size=5)
    assert store.add_feedback("m", "1", np.array([[1.5, 2.0], [3.0, 4.25]]), [0, "b"]) == 2
    assert feedback_pairs(store, "m") == [([1.5, 2.0], 0), ([3.0, 4.25], "b")]
    assert store.count_feedback("m") == 2 and store.count_feedback("x") == 0
    store.add_feedback("m", "2", np.array([[5.0, 6.0]]), [2], FeedbackProvenance("feedback", "10.0.0.9", "lab-1"))
    last = list(open_store(store_url, window_size=5).iter_feedback_records("m"))[-1]
    assert (last.features, last.label, last.model_version) == ([5.0, 6.0], 2, "2")
    assert (last.credential, last.client_addr, last.source) == ("feedback", "10.0.0.9", "lab-1")
    assert last.created_at > 1.7e9


def test_reload_outcome(store_url):
    store = open_store(store_url, window_size=5)
    assert store.last_reload("m") is None
    store.record_reload("m", False, "3", "boom")
    last = store.last_reload("m")
    assert not last.ok and last.version == "3" and last.message == "boom"
    store.record_reload("m", True, "4", None)
    last = store.last_reload("m")
    assert last.ok and last.version == "4" and last.message is None


def test_a_failed_reload_is_settled_only_if_nothing_was_recorded_since(store_url):
    store = open_store(store_url, window_size=5)
    assert store.clear_failed_reload("m", 1.0, "1", "settled") is False  # nothing recorded
    store.record_reload("m", False, "2", "MLflow unreachable")
    failed = store.last_reload("m")
    assert store.clear_failed_reload("m", failed.at + 1, "1", "settled") is False  # not that failure
    store.record_reload("m", False, "2", "MLflow unreachable again")
    newer = store.last_reload("m")
    assert store.clear_failed_reload("m", failed.at, "1", "settled") is False or newer.at == failed.at
    assert store.clear_failed_reload("m", newer.at, "1", "settled") is True
    last = store.last_reload("m")
    assert last.ok and last.version == "1" and last.message == "settled" and last.at >= newer.at
    assert store.clear_failed_reload("m", newer.at, "1", "settled") is False  # already settled


def test_activate_if_absent_never_replaces_a_record(store_url):
    store = open_store(store_url, window_size=5)
    first, started = store.activate("m", "1", "a", if_absent=True)
    assert started and first.version == "1"
    same, started = store.activate("m", "2", "b", if_absent=True)
    assert not started and same == first


def test_unsupported_store_url_is_refused_without_echoing_the_password():
    from serving.store import check_store_url

    with pytest.raises(ValueError) as err:
        check_store_url("mysql://u:s3cret@db/x")
    assert "s3cret" not in str(err.value) and "sqlite:///" in str(err.value)
    with pytest.raises(ValueError, match="names no host"):
        check_store_url("postgresql:///db")
    with pytest.raises(ValueError, match="file path"):
        check_store_url("sqlite:///")


# -- PostgreSQL: replicas, outages -------------------------------------------------------------------


def test_replicas_starting_together_create_the_schema_once_and_agree_on_one_record(postgres_url):
    ctx = mp.get_context("spawn")  # a fork of this many-threaded process can hang
    n = 6
    barrier, queue = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=start_replica, args=(postgres_url, str(k + 1), barrier, queue)) for k in range(n)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert len({r[:3] for r in results}) == 1, results  # one version, one epoch, one generation
    assert sum(r[3] for r in results) == 1  # exactly one replica started the epoch
    import psycopg

    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT COUNT(*) FROM epochs").fetchone()[0] == 1


def test_store_outage_fails_fast_loses_nothing_and_recovers_without_a_new_store():
    import time

    from stack.local_postgres import start_local_postgres

    server = start_local_postgres()
    try:
        url = server.create_database("serving")
        store = open_store(url, window_size=100, retry_after=1.0)
        record, _ = store.activate("m", "1", "a")
        store.add_rows(record.epoch, np.arange(20, dtype=float).reshape(10, 2))
        store.add_feedback("m", "1", np.array([[1.0, 2.0]]), [1])
        server.stop("immediate")  # like a crash of the database server

        t0 = time.monotonic()
        with pytest.raises(StoreUnavailable) as err:
            store.generation("m")
        assert time.monotonic() - t0 < 5
        assert server.password not in str(err.value) and "127.0.0.1" in str(err.value)
        for call in (
            lambda: store.add_rows(record.epoch, np.ones((1, 2))),
            lambda: store.window(record.epoch, 100),
            lambda: feedback_pairs(store, "m"),
            lambda: store.add_feedback("m", "1", np.ones((1, 2)), [0]),
        ):
            t0 = time.monotonic()
            with pytest.raises(StoreUnavailable):
                call()
            assert time.monotonic() - t0 < 5

        server.start()
        deadline = time.monotonic() + 30
        while True:  # the same store object reconnects once the breaker lets it try again
            try:
                window = store.window(record.epoch, 100)
                break
            except StoreUnavailable:
                assert time.monotonic() < deadline, "the store did not reconnect after the server came back"
                time.sleep(0.2)
        assert window[:, 0].tolist() == list(np.arange(0, 20, 2, dtype=float))  # every stored row is there
        assert feedback_pairs(store, "m") == [([1.0, 2.0], 1)]
        assert store.served("m").version == "1" and store.generation("m") == record.generation
    finally:
        server.destroy()


# -- SQLite: state files of older versions ---------------------------------------------------------------

# the feedback table as the first release created it (before provenance columns existed)
_OLD_FEEDBACK_TABLE = """
CREATE TABLE feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    model_name TEXT NOT NULL,
    model_version TEXT,
    created_at REAL NOT NULL,
    features TEXT NOT NULL,
    label TEXT NOT NULL
);
CREATE INDEX feedback_model ON feedback (model_name, id);
INSERT INTO feedback (model_name, model_version, created_at, features, label)
    VALUES ('m', '1', 1700000000.5, '[1.5, 2.0]', '0'), ('m', '1', 1700000001.0, '[3.0, 4.25]', '"b"'),
           ('other', '2', 1700000002.0, '[9.0, 9.0]', '1');
"""


def test_old_state_file_is_migrated_in_place_and_keeps_its_rows(tmp_path):
    import sqlite3

    from serving.store import FeedbackProvenance

    path = tmp_path / "s.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.executescript(_OLD_FEEDBACK_TABLE)
    store = SQLiteStore(path, window_size=5)
    columns = [row[1] for row in store.conn.execute("PRAGMA table_info(feedback)")]
    assert columns[-3:] == ["credential", "client_addr", "source"]
    old = list(store.iter_feedback_records("m"))
    assert [(r.features, r.label, r.model_version, r.created_at) for r in old] == [
        ([1.5, 2.0], 0, "1", 1700000000.5),
        ([3.0, 4.25], "b", "1", 1700000001.0),
    ]
    assert all(r.credential is None and r.client_addr is None and r.source is None for r in old)
    assert store.count_feedback("other") == 1

    store.add_feedback("m", "3", np.array([[5.0, 6.0]]), [2], FeedbackProvenance("feedback", "10.0.0.9", "lab-1"))
    again = SQLiteStore(path, window_size=5)  # opening a migrated file again changes nothing
    records = list(again.iter_feedback_records("m"))
    assert len(records) == 3 and records[:2] == old
    new = records[2]
    assert (new.features, new.label, new.model_version) == ([5.0, 6.0], 2, "3")
    assert (new.credential, new.client_addr, new.source) == ("feedback", "10.0.0.9", "lab-1")
    assert feedback_pairs(again, "m")[-1] == ([5.0, 6.0], 2)


# the epochs table before the reset count existed, with one epoch and its window
_OLD_EPOCHS_TABLE = """
CREATE TABLE served (model_name TEXT PRIMARY KEY, version TEXT NOT NULL, run_id TEXT, epoch INTEGER NOT NULL,
    generation INTEGER NOT NULL, activated_at REAL NOT NULL);
CREATE TABLE epochs (id INTEGER PRIMARY KEY AUTOINCREMENT, model_name TEXT NOT NULL, version TEXT NOT NULL,
    started_at REAL NOT NULL);
CREATE TABLE window_rows (id INTEGER PRIMARY KEY, epoch INTEGER NOT NULL, x BLOB NOT NULL);
INSERT INTO served VALUES ('m', '4', 'r', 1, 3, 1700000000.0);
INSERT INTO epochs (model_name, version, started_at) VALUES ('m', '4', 1700000000.0);
"""


def test_old_state_file_gets_the_reset_count_and_keeps_its_window(tmp_path):
    import sqlite3

    path = tmp_path / "s.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.executescript(_OLD_EPOCHS_TABLE)
        conn.execute("INSERT INTO window_rows (epoch, x) VALUES (1, ?)", (np.array([1.0, 2.0]).tobytes(),))
    store = SQLiteStore(path, window_size=5)
    assert "resets" in [row[1] for row in store.conn.execute("PRAGMA table_info(epochs)")]
    assert store.drift_counts(1) == DriftCounts(0, 0, 0)
    snap = store.window_snapshot(1, 5)
    assert snap.rows.tolist() == [[1.0, 2.0]] and snap.first_row == snap.last_row == 1
    assert store.reset_window(1) == WindowReset(dropped=1, resets=1)
    assert SQLiteStore(path, window_size=5).drift_counts(1).window_resets == 1


def test_old_postgres_database_gets_the_reset_count(postgres_url):
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE epochs (id BIGSERIAL PRIMARY KEY, model_name TEXT NOT NULL, version TEXT NOT NULL, "
            "started_at DOUBLE PRECISION NOT NULL)"
        )
        conn.execute("INSERT INTO epochs (model_name, version, started_at) VALUES ('m', '4', 1700000000.0)")
    store = open_store(postgres_url, window_size=5)
    assert store.drift_counts(1) == DriftCounts(0, 0, 0)
    assert store.reset_window(1) == WindowReset(dropped=0, resets=1)
    assert open_store(postgres_url, window_size=5).drift_counts(1).window_resets == 1
