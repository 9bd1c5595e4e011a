"""The shared SQLite store: one window for all processes, epochs, feedback."""
from __future__ import annotations

import multiprocessing as mp

import numpy as np

from serving.store import SQLiteStore


def _writer(path, epoch, start, n):
    store = SQLiteStore(path, window_size=1000)
    for i in range(start, start + n):
        store.add_rows(epoch, np.array([[float(i), 0.0]]))


def test_window_is_shared_by_processes_and_trimmed(tmp_path):
    path = tmp_path / "s.sqlite3"
    store = SQLiteStore(path, window_size=50, prune_every=7)
    record, started = store.activate("m", "1", "run1")
    assert started and record.generation == 1
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(path, record.epoch, k * 1000, 60)) for k in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    window = store.window(record.epoch, 50)
    assert window.shape == (50, 2)
    # a second store object (another worker, or the app after a restart) sees the same rows
    again = SQLiteStore(path, window_size=50)
    assert np.array_equal(again.window(record.epoch, 50), window)
    store.prune(record.epoch)
    assert store.conn.execute("SELECT COUNT(*) FROM window_rows").fetchone()[0] == 50


def test_activation_restarts_the_window_only_for_a_new_version(tmp_path):
    store = SQLiteStore(tmp_path / "s.sqlite3", window_size=10)
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


def test_batch_larger_than_window_keeps_the_last_rows(tmp_path):
    store = SQLiteStore(tmp_path / "s.sqlite3", window_size=5)
    r, _ = store.activate("m", "1", None)
    store.add_rows(r.epoch, np.arange(40, dtype=float).reshape(20, 2))
    w = store.window(r.epoch, 5)
    assert w[:, 0].tolist() == [30.0, 32.0, 34.0, 36.0, 38.0]
    assert store.reset_window(r.epoch) == 5
    assert store.window(r.epoch, 5).shape[0] == 0


def test_feedback_round_trip(tmp_path):
    store = SQLiteStore(tmp_path / "s.sqlite3", window_size=5)
    assert store.add_feedback("m", "1", np.array([[1.5, 2.0], [3.0, 4.25]]), [0, "b"]) == 2
    assert list(store.iter_feedback("m")) == [([1.5, 2.0], 0), ([3.0, 4.25], "b")]
    assert store.count_feedback("m") == 2 and store.count_feedback("x") == 0


def test_reload_outcome(tmp_path):
    store = SQLiteStore(tmp_path / "s.sqlite3", window_size=5)
    assert store.last_reload("m") is None
    store.record_reload("m", False, "3", "boom")
    last = store.last_reload("m")
    assert not last.ok and last.version == "3" and last.message == "boom"


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
    assert [(r.features, r.label, r.model_version, r.created_at) for r in old] == \
           [([1.5, 2.0], 0, "1", 1700000000.5), ([3.0, 4.25], "b", "1", 1700000001.0)]
    assert all(r.credential is None and r.client_addr is None and r.source is None for r in old)
    assert store.count_feedback("other") == 1

    store.add_feedback("m", "3", np.array([[5.0, 6.0]]), [2], FeedbackProvenance("feedback", "10.0.0.9", "lab-1"))
    again = SQLiteStore(path, window_size=5)  # opening a migrated file again changes nothing
    records = list(again.iter_feedback_records("m"))
    assert len(records) == 3 and records[:2] == old
    new = records[2]
    assert (new.features, new.label, new.model_version) == ([5.0, 6.0], 2, "3")
    assert (new.credential, new.client_addr, new.source) == ("feedback", "10.0.0.9", "lab-1")
    assert list(again.iter_feedback("m"))[-1] == ([5.0, 6.0], 2)


def test_activate_if_absent_never_replaces_a_record(tmp_path):
    store = SQLiteStore(tmp_path / "s.sqlite3", window_size=5)
    first, started = store.activate("m", "1", "a", if_absent=True)
    assert started and first.version == "1"
    same, started = store.activate("m", "2", "b", if_absent=True)
    assert not started and same == first
