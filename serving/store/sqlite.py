"""The embedded state store: one SQLite file in WAL mode, shared by every worker of one host.

State files written by an older version are migrated in place when a store opens them (new columns
are added, no row is lost). Driver errors leave as `StoreUnavailable` (serving/store/base.py).

The file is never reset silently: opening an existing file that is empty, not SQLite, truncated,
damaged or another application's database raises `StateFileError` (naming the file and what to do)
and leaves it byte-for-byte as it was. A new state is built in a temporary file and hard-linked into
place, so a crash cannot leave a 0-byte or half-made file under the state file's name, and of several
workers creating it at once exactly one file wins. Connections never create the file (`mode=rw`).
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import quote

import numpy as np

from serving.store.base import (
    FEEDBACK_COLUMNS,
    DriftCounts,
    FeedbackProvenance,
    FeedbackRecord,
    ReloadOutcome,
    ServedRecord,
    StateFileError,
    StateStore,
    StoreUnavailable,
    WindowReset,
    WindowSnapshot,
    activation_change,
    counts_from_row,
    feedback_params,
    feedback_record,
    snapshot_from_rows,
    translate_errors,
)

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
    started_at REAL NOT NULL,
    resets INTEGER NOT NULL DEFAULT 0
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
-- /drift/status counts the labelled rows since the served version's activation on every call
CREATE INDEX IF NOT EXISTS feedback_model_created ON feedback (model_name, created_at);
"""

# The tables of a serving state. A file with none of them is another application's database; one
# with some of them is an older state (the missing ones are created, like missing columns).
STATE_TABLES = ("served", "epochs", "window_rows", "reloads", "feedback")
SQLITE_MAGIC = b"SQLite format 3\x00"
# SQLite result codes that mean "this file is damaged or no database", not "busy right now"
_CORRUPT_CODES = {11, 26}  # SQLITE_CORRUPT, SQLITE_NOTADB

# Columns added after the first release, by table: `_init_schema` adds the ones an existing state file
# lacks (ALTER TABLE ... ADD COLUMN keeps every row; old rows read NULL there). Append, never edit.
_ADDED_COLUMNS = {
    "feedback": (("credential", "TEXT"), ("client_addr", "TEXT"), ("source", "TEXT")),
    "epochs": (("resets", "INTEGER NOT NULL DEFAULT 0"),),
}


def _uri(path: Path, mode: str) -> str:
    return f"file:{quote(str(Path(path).absolute()))}?mode={mode}"


def _schema_statements() -> list[str]:
    return [s for s in (part.strip() for part in _SCHEMA.split(";")) if s]


def check_state_file(path: str | os.PathLike[str], timeout: float = 10.0) -> bool:
    """Is `path` a usable serving state? False when there is no file (a new state will be created),
    True when it is one; `StateFileError` (what is wrong, what to do) when it is not.

    Reads only: the header and size with plain file reads first (0 bytes, not SQLite, shorter than its
    header says), then `PRAGMA quick_check` and the table list on a read-only connection (damaged
    pages or indexes, another application's database). The file itself is never written; a -wal or
    -shm file the read-only connection had to create beside a refused file is removed again.
    """
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        _refuse_orphaned_wal(path)
        return False
    if not stat.S_ISREG(st.st_mode):
        raise StateFileError(
            path,
            "is not a regular file",
            "Point SERVING_DB_PATH / SERVING_STORE_URL at the state file, or move this out of the way",
        )
    if st.st_size == 0:
        raise StateFileError(
            path,
            "is empty (0 bytes): its rows are gone, e.g. truncated by a full disk, a "
            "failed copy or a crash of an older version while it created the file",
        )
    with open(path, "rb") as fh:
        header = fh.read(100)
    if not header.startswith(SQLITE_MAGIC):
        raise StateFileError(
            path, f"is not an SQLite database ({st.st_size} bytes starting with {header[:16]!r}, not {SQLITE_MAGIC!r})"
        )
    if len(header) < 100:
        raise StateFileError(path, f"is truncated: {st.st_size} bytes, shorter than an SQLite header")
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    wal = Path(f"{path}-wal")
    wal_frames = wal.exists() and wal.stat().st_size > 32  # pages of the last commits may live there
    if not wal_frames and header[24:28] == header[92:96] and page_size >= 512 and st.st_size < pages * page_size:
        raise StateFileError(
            path,
            f"is truncated: {st.st_size} bytes where its header counts {pages} pages "
            f"of {page_size} bytes ({pages * page_size} bytes)",
        )
    _check_with_sqlite(path, timeout)
    return True


def _check_with_sqlite(path: Path, timeout: float) -> None:
    companions = [Path(f"{path}{suffix}") for suffix in ("-wal", "-shm")]
    existed = {p: p.exists() for p in companions}
    problem = None
    try:
        conn = sqlite3.connect(_uri(path, "ro"), uri=True, timeout=timeout, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            findings = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            conn.close()
        if findings != ["ok"]:
            found = "; ".join(" ".join(str(f).split()) for f in findings)
            problem = f"is damaged (SQLite's quick_check: {found[:400]})"
        elif not tables:
            problem = "is an SQLite database without any table, not a serving state"
        elif not set(STATE_TABLES) & tables:
            shown = ", ".join(sorted(tables)[:8]) + (", ..." if len(tables) > 8 else "")
            problem = (
                f"is another application's SQLite database (tables: {shown}), not a serving state "
                f"(tables {', '.join(STATE_TABLES)})"
            )
    except sqlite3.DatabaseError as exc:
        if getattr(exc, "sqlite_errorcode", None) not in _CORRUPT_CODES:
            raise StoreUnavailable(f"sqlite:///{path}", " ".join(str(exc).split()) or type(exc).__name__) from exc
        problem = f"is damaged or not a database (SQLite: {exc})"
    if problem is not None:
        for companion in companions:  # what our read-only look created (empty), not what was there
            if (
                not existed[companion]
                and companion.exists()
                and (not companion.name.endswith("-wal") or companion.stat().st_size == 0)
            ):
                companion.unlink(missing_ok=True)
        raise StateFileError(path, problem)


def create_state_file(path: str | os.PathLike[str]) -> bool:
    """Create a new, empty serving state at `path` unless a file is there already; True if this call
    created it. The schema is written into a temporary file, which is then hard-linked to `path`: the
    name appears complete or not at all, and when several workers start on no state at once the first
    link wins and the others open that file (theirs are dropped)."""
    path = Path(path)
    if not path.exists():
        _refuse_orphaned_wal(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.new")
    try:
        conn = sqlite3.connect(str(tmp), isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            for stmt in _schema_statements():
                conn.execute(stmt)
            conn.execute("COMMIT")
            conn.execute("PRAGMA journal_mode = WAL")  # recorded in the header: the first open needs no switch
        finally:
            conn.close()
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
            created = True
        except FileExistsError:
            created = False
        except OSError:  # a file system without hard links: rename, under a lock, only if still absent
            created = _rename_if_absent(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return created
    finally:
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{tmp}{suffix}").unlink(missing_ok=True)


def _refuse_orphaned_wal(path: Path) -> None:
    """No state file, but its -wal: SQLite would replay those pages into a new file of that name."""
    wal = Path(f"{path}-wal")
    if wal.exists() and wal.stat().st_size > 0:
        raise StateFileError(
            path,
            f"does not exist, but {wal.name} next to it does ({wal.stat().st_size} bytes): the recent "
            "changes of a state file that was moved or deleted, which SQLite would replay into a new file",
            f"Move {wal.name} (and {path.name}-shm) to where that state file went, or out of the way to start "
            "with an empty state",
        )


def _rename_if_absent(tmp: Path, path: Path) -> bool:
    import fcntl

    with open(path.with_name(f".{path.name}.create-lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists():
            return False
        os.rename(tmp, path)
        return True


@translate_errors(sqlite3.Error)
class SQLiteStore(StateStore):
    """All three stores in one SQLite file (WAL mode: readers never block the one writer).

    One connection per process and thread (connections are never shared across a fork). A request
    costs one `SELECT generation` and, for /predict, one INSERT in autocommit mode; the window is
    trimmed every `prune_every` inserts of a process, not on each one.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        window_size: int,
        busy_timeout_ms: int = 10_000,
        prune_every: int = 256,
        checkpoint_seconds: float = 1.0,
    ):
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
        timeout = self.busy_timeout_ms / 1000.0
        if not self.path.exists():
            create_state_file(self.path)  # a complete new state, or another worker's if it won the race
        check_state_file(self.path, timeout)
        self._init_schema()

    # -- connections -------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        # mode=rw: a state file that disappeared is an error, never silently a new empty one
        conn = sqlite3.connect(
            _uri(self.path, "rw"),
            uri=True,
            timeout=self.busy_timeout_ms / 1000.0,
            isolation_level=None,
            check_same_thread=False,
        )
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
                for stmt in _schema_statements():
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

    def activate(
        self, model_name: str, version: str, run_id: str | None, if_absent: bool = False
    ) -> tuple[ServedRecord, bool]:
        conn = self.conn
        now = time.time()
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute(
                "SELECT version, epoch, generation FROM served WHERE model_name = ?", (model_name,)
            ).fetchone()
            change = activation_change(None if row is None else row[0], version, if_absent)
            if change == "run_id":
                conn.execute("UPDATE served SET run_id = ? WHERE model_name = ?", (run_id, model_name))
            if change == "new_epoch":
                epoch = conn.execute(
                    "INSERT INTO epochs (model_name, version, started_at) VALUES (?, ?, ?)",
                    (model_name, str(version), now),
                ).lastrowid
                generation = (row[2] + 1) if row is not None else 1
                conn.execute(
                    "INSERT INTO served (model_name, version, run_id, epoch, generation, activated_at) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (model_name) DO UPDATE SET version = excluded.version, "
                    "run_id = excluded.run_id, epoch = excluded.epoch, generation = excluded.generation, "
                    "activated_at = excluded.activated_at",
                    (model_name, str(version), run_id, epoch, generation, now),
                )
                # the old windows of this model name are of no further use
                conn.execute(
                    "DELETE FROM window_rows WHERE epoch IN (SELECT id FROM epochs WHERE model_name = ? AND id <> ?)",
                    (model_name, epoch),
                )
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
        row = self.conn.execute(
            "SELECT ok, version, message, at FROM reloads WHERE model_name = ?", (model_name,)
        ).fetchone()
        return None if row is None else ReloadOutcome(bool(row[0]), row[1], row[2], row[3])

    def clear_failed_reload(self, model_name: str, failed_at: float, version: str, message: str) -> bool:
        return (
            self.conn.execute(
                "UPDATE reloads SET ok = 1, version = ?, message = ?, at = ? "
                "WHERE model_name = ? AND ok = 0 AND at = ?",
                (version, message, time.time(), model_name, failed_at),
            ).rowcount
            == 1
        )

    # -- drift window --------------------------------------------------------------------------
    def add_rows(self, epoch: int, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=np.float64)
        conn = self.conn
        if len(rows) == 1:
            conn.execute("INSERT INTO window_rows (epoch, x) VALUES (?, ?)", (epoch, rows[0].tobytes()))
        else:
            # a batch larger than the window only leaves its last rows in it
            rows = rows[-self.window_size :]
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(
                    "INSERT INTO window_rows (epoch, x) VALUES (?, ?)", [(epoch, r.tobytes()) for r in rows]
                )
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

    def window_snapshot(self, epoch: int, size: int) -> WindowSnapshot:
        rows = self.conn.execute(
            "SELECT id, x FROM window_rows WHERE epoch = ? ORDER BY id DESC LIMIT ?", (epoch, int(size))
        ).fetchall()
        return snapshot_from_rows(rows)

    def reset_window(self, epoch: int) -> WindowReset:
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Emptied, the table may hand out its ids again (rowid = max + 1): harmless, because the
            # reset count below starts a new episode and ids need only grow within one.
            dropped = conn.execute("DELETE FROM window_rows WHERE epoch = ?", (epoch,)).rowcount
            resets = conn.execute(
                "UPDATE epochs SET resets = resets + 1 WHERE id = ? RETURNING resets", (epoch,)
            ).fetchall()  # all: no statement may be left open at COMMIT
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return WindowReset(dropped, int(resets[0][0]) if resets else 0)

    def drift_counts(self, epoch: int) -> DriftCounts:
        row = self.conn.execute(
            "SELECT e.resets, "
            "(SELECT COUNT(*) FROM feedback WHERE model_name = e.model_name), "
            "(SELECT COUNT(*) FROM feedback WHERE model_name = e.model_name AND created_at >= e.started_at) "
            "FROM epochs e WHERE e.id = ?",
            (epoch,),
        ).fetchone()
        return counts_from_row(row)

    # -- feedback ------------------------------------------------------------------------------
    def add_feedback(
        self,
        model_name: str,
        model_version: str | None,
        rows: np.ndarray,
        labels: Sequence[int | str],
        provenance: FeedbackProvenance | None = None,
    ) -> int:
        params = feedback_params(model_name, model_version, rows, labels, provenance)
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(
                "INSERT INTO feedback (model_name, model_version, created_at, features, label, "
                "credential, client_addr, source) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                params,
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return len(params)

    def iter_feedback_records(self, model_name: str) -> Iterator[FeedbackRecord]:
        cursor = self.conn.execute(
            f"SELECT {FEEDBACK_COLUMNS} FROM feedback WHERE model_name = ? ORDER BY id", (model_name,)
        )
        for row in cursor:
            yield feedback_record(row)

    def count_feedback(self, model_name: str) -> int:
        return int(self.conn.execute("SELECT COUNT(*) FROM feedback WHERE model_name = ?", (model_name,)).fetchone()[0])
