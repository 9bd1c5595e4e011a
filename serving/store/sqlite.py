"""The embedded state store: one SQLite file in WAL mode, shared by every worker of one host.

State files written by an older version are migrated in place when a store opens them (new columns
are added, no row is lost). Driver errors leave as `StoreUnavailable` (serving/store/base.py).
"""
from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from serving.store.base import (FEEDBACK_COLUMNS, FeedbackProvenance, FeedbackRecord, ReloadOutcome,
                                ServedRecord, StateStore, activation_change, feedback_params,
                                feedback_record, translate_errors, window_array)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS served (
    model_name TEXT PRIMARY KEY,
    version TEXT NOT NULL,
    run_id TEXT,
    epoch INTEGER NOT NULL,
    generation INTEGER NOT NULL,
    activated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS epochs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    model_name TEXT NOT NULL,
    version TEXT NOT NULL,
    started_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS window_rows (
    id INTEGER PRIMARY KEY,
    epoch INTEGER NOT NULL,
    x BLOB NOT NULL
);
-- no AUTOINCREMENT and no secondary index on purpose: an insert then changes one b-tree page (new
-- rowids are max + 1, so they still grow within an epoch), and the window queries walk the rowid
-- b-tree backwards (old epochs are deleted when a new one starts)
CREATE TABLE IF NOT EXISTS reloads (
    model_name TEXT PRIMARY KEY,
    ok INTEGER NOT NULL,
    version TEXT,
    message TEXT,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    model_name TEXT NOT NULL,
    model_version TEXT,
    created_at REAL NOT NULL,
    features TEXT NOT NULL,
    label TEXT NOT NULL,
    credential TEXT,
    client_addr TEXT,
    source TEXT
);
CREATE INDEX IF NOT EXISTS feedback_model ON feedback (model_name, id);
"""

# Columns added after the first release, by table: `_init_schema` adds the ones an existing state file
# lacks (ALTER TABLE ... ADD COLUMN keeps every row; old rows read NULL there). Append, never edit.
_ADDED_COLUMNS = {
    "feedback": (("credential", "TEXT"), ("client_addr", "TEXT"), ("source", "TEXT")),
}


@translate_errors(sqlite3.Error)
class SQLiteStore(StateStore):
    """All three stores in one SQLite file (WAL mode: readers never block the one writer).

    One connection per process and thread (connections are never shared across a fork). A request
    costs one `SELECT generation` and, for /predict, one INSERT in autocommit mode; the window is
    trimmed every `prune_every` inserts of a process, not on each one.
    """

    def __init__(self, path: str | os.PathLike, window_size: int, busy_timeout_ms: int = 10_000,
                 prune_every: int = 256, checkpoint_seconds: float = 1.0):
        self.path = Path(path)
        self.location = f"sqlite:///{self.path}"
        self.window_size = int(window_size)
        self.busy_timeout_ms = busy_timeout_ms
        self.prune_every = max(1, int(prune_every))
        self.checkpoint_seconds = checkpoint_seconds
        self._local = threading.local()
        self._inserts = 0
        self._checkpointer_pid: int | None = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._init_schema()

    # -- connections -------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(str(self.path), timeout=self.busy_timeout_ms / 1000.0,
                               isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
        conn.execute("PRAGMA synchronous = NORMAL")
        if self.checkpoint_seconds > 0:
            # WAL checkpoints (and their fsyncs) run in a background thread, not inside a request
            conn.execute("PRAGMA wal_autocheckpoint = 0")
        return conn

    @property
    def conn(self) -> sqlite3.Connection:
        local = self._local
        conn = getattr(local, "conn", None)
        if conn is None or local.pid != os.getpid():
            conn = self._connect()
            local.conn = conn
            local.pid = os.getpid()
            if self.checkpoint_seconds > 0 and self._checkpointer_pid != local.pid:
                self._start_checkpointer()
        return conn

    def _start_checkpointer(self) -> None:
        """One daemon thread per process: a PASSIVE checkpoint every `checkpoint_seconds` (never
        blocks readers or the writer; several processes doing it is harmless)."""
        self._checkpointer_pid = os.getpid()
        pid = self._checkpointer_pid

        def run() -> None:
            conn = None
            while os.getpid() == pid:
                time.sleep(self.checkpoint_seconds)
                try:
                    if conn is None:
                        conn = self._connect()
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error:
                    conn = None
                if not self.path.exists():  # the store was removed (tests): stop
                    return

        threading.Thread(target=run, name="sqlite-wal-checkpoint", daemon=True).start()

    def _init_schema(self) -> None:
        conn = self._connect()
        try:
            deadline = time.monotonic() + self.busy_timeout_ms / 1000.0
            while True:  # switching to WAL needs a moment without other writers: retry on 'locked'
                try:
                    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                    break
                except sqlite3.OperationalError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            if str(mode).lower() != "wal":
                raise RuntimeError(f"{self.path}: could not switch SQLite to WAL mode (got {mode})")
            conn.execute("BEGIN IMMEDIATE")
            try:
                for stmt in filter(None, (s.strip() for s in _SCHEMA.split(";"))):
                    conn.execute(stmt)
                self._migrate(conn)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        finally:
            conn.close()

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        """Bring a state file written by an older version up to the current schema, in place (inside
        the caller's IMMEDIATE transaction, so concurrent worker starts migrate once)."""
        for table, columns in _ADDED_COLUMNS.items():
            present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
            for name, decl in columns:
                if name not in present:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            conn.close()
        self._local = threading.local()

    # -- served state --------------------------------------------------------------------------
    def generation(self, model_name: str) -> int | None:
        row = self.conn.execute("SELECT generation FROM served WHERE model_name = ?", (model_name,)).fetchone()
        return None if row is None else row[0]

    def served(self, model_name: str) -> ServedRecord | None:
        row = self.conn.execute(
            "SELECT s.model_name, s.version, s.run_id, s.epoch, s.generation, s.activated_at, e.started_at "
            "FROM served s LEFT JOIN epochs e ON e.id = s.epoch WHERE s.model_name = ?",
            (model_name,),
        ).fetchone()
        if row is None:
            return None
        return ServedRecord(row[0], row[1], row[2], row[3], row[4], row[5], row[6] or row[5])

    def activate(self, model_name: str, version: str, run_id: str | None,
                 if_absent: bool = False) -> tuple[ServedRecord, bool]:
        conn = self.conn
        now = time.time()
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute("SELECT version, epoch, generation FROM served WHERE model_name = ?",
                               (model_name,)).fetchone()
            change = activation_change(None if row is None else row[0], version, if_absent)
            if change == "run_id":
                conn.execute("UPDATE served SET run_id = ? WHERE model_name = ?", (run_id, model_name))
            if change == "new_epoch":
                epoch = conn.execute("INSERT INTO epochs (model_name, version, started_at) VALUES (?, ?, ?)",
                                     (model_name, str(version), now)).lastrowid
                generation = (row[2] + 1) if row is not None else 1
                conn.execute(
                    "INSERT INTO served (model_name, version, run_id, epoch, generation, activated_at) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (model_name) DO UPDATE SET version = excluded.version, "
                    "run_id = excluded.run_id, epoch = excluded.epoch, generation = excluded.generation, "
                    "activated_at = excluded.activated_at",
                    (model_name, str(version), run_id, epoch, generation, now),
                )
                # the old windows of this model name are of no further use
                conn.execute("DELETE FROM window_rows WHERE epoch IN "
                             "(SELECT id FROM epochs WHERE model_name = ? AND id <> ?)", (model_name, epoch))
            started = change == "new_epoch"
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        record = self.served(model_name)
        assert record is not None
        return record, started

    def record_reload(self, model_name: str, ok: bool, version: str | None, message: str | None) -> None:
        self.conn.execute(
            "INSERT INTO reloads (model_name, ok, version, message, at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (model_name) DO UPDATE SET ok = excluded.ok, version = excluded.version, "
            "message = excluded.message, at = excluded.at",
            (model_name, 1 if ok else 0, version, message, time.time()),
        )

    def last_reload(self, model_name: str) -> ReloadOutcome | None:
        row = self.conn.execute("SELECT ok, version, message, at FROM reloads WHERE model_name = ?",
                                (model_name,)).fetchone()
        return None if row is None else ReloadOutcome(bool(row[0]), row[1], row[2], row[3])

    # -- drift window --------------------------------------------------------------------------
    def add_rows(self, epoch: int, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=np.float64)
        conn = self.conn
        if len(rows) == 1:
            conn.execute("INSERT INTO window_rows (epoch, x) VALUES (?, ?)", (epoch, rows[0].tobytes()))
        else:
            # a batch larger than the window only leaves its last rows in it
            rows = rows[-self.window_size:]
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany("INSERT INTO window_rows (epoch, x) VALUES (?, ?)",
                                 [(epoch, r.tobytes()) for r in rows])
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        self._inserts += len(rows)
        if self._inserts >= self.prune_every:
            self._inserts = 0
            self.prune(epoch)

    def prune(self, epoch: int) -> None:
        """Drop the rows of the epoch that fell out of the window (older than the last window_size)."""
        self.conn.execute(
            "DELETE FROM window_rows WHERE epoch = ? AND id < (SELECT MIN(id) FROM "
            "(SELECT id FROM window_rows WHERE epoch = ? ORDER BY id DESC LIMIT ?))",
            (epoch, epoch, self.window_size),
        )

    def window(self, epoch: int, size: int) -> np.ndarray:
        blobs = self.conn.execute("SELECT x FROM window_rows WHERE epoch = ? ORDER BY id DESC LIMIT ?",
                                  (epoch, int(size))).fetchall()
        return window_array(blobs)

    def reset_window(self, epoch: int) -> int:
        return self.conn.execute("DELETE FROM window_rows WHERE epoch = ?", (epoch,)).rowcount

    # -- feedback ------------------------------------------------------------------------------
    def add_feedback(self, model_name: str, model_version: str | None, rows: np.ndarray,
                     labels: Sequence[int | str], provenance: FeedbackProvenance | None = None) -> int:
        params = feedback_params(model_name, model_version, rows, labels, provenance)
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany("INSERT INTO feedback (model_name, model_version, created_at, features, label, "
                             "credential, client_addr, source) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", params)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return len(params)

    def iter_feedback_records(self, model_name: str) -> Iterator[FeedbackRecord]:
        cursor = self.conn.execute(
            f"SELECT {FEEDBACK_COLUMNS} FROM feedback WHERE model_name = ? ORDER BY id", (model_name,))
        for row in cursor:
            yield feedback_record(row)

    def count_feedback(self, model_name: str) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM feedback WHERE model_name = ?", (model_name,)).fetchone()[0]
