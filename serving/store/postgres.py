"""The server-backed state store: PostgreSQL through psycopg 3 and a connection pool, for several replicas.

Same tables and semantics as the SQLite store (serving/store/sqlite.py): one drift window for every
worker of every replica, the served record whose generation every request reads, feedback with its
provenance. Differences that matter in production:

- Schema creation and every change of the served record run under a transaction-scoped advisory
  lock, so replicas that start (or reload) at the same moment create the tables once and agree on
  one epoch.
- Drift-window inserts commit asynchronously (`synchronous_commit = off` for the session): the row is
  committed and visible to every replica when the INSERT returns, only its WAL flush is deferred
  (by at most three `wal_writer_delay`s, 600 ms by default), so a crash of the *database server*
  can lose the last fraction of a second of window rows; a killed serving pod loses nothing.
  Feedback rows, reload outcomes and the served record commit synchronously.
- When the server is unreachable, calls fail within `connect_timeout` and then, for `retry_after`
  seconds, at once (a breaker): /predict keeps answering from the loaded model without waiting on
  the database. Driver errors leave as `StoreUnavailable`.

One pool per process (gunicorn workers fork; a pool is never shared across a fork); each thread that
uses the store holds one of its connections, opened on first use (a sync gunicorn worker: one;
`pool_size`, 16, bounds the threads of a gthread worker).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import numpy as np
import psycopg
import psycopg_pool
from psycopg import pq
from psycopg.conninfo import make_conninfo
from psycopg.pq.abc import PGresult

from serving.store.base import (
    FEEDBACK_COLUMNS,
    DriftCounts,
    FeedbackProvenance,
    FeedbackRecord,
    ReloadOutcome,
    ServedRecord,
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

log = logging.getLogger(__name__)
T = TypeVar("T")

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS served (
        model_name TEXT PRIMARY KEY,
        version TEXT NOT NULL,
        run_id TEXT,
        epoch BIGINT NOT NULL,
        generation BIGINT NOT NULL,
        activated_at DOUBLE PRECISION NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS epochs (
        id BIGSERIAL PRIMARY KEY,
        model_name TEXT NOT NULL,
        version TEXT NOT NULL,
        started_at DOUBLE PRECISION NOT NULL,
        resets BIGINT NOT NULL DEFAULT 0)""",
    # added after the first release: databases created before get the column here (every row reads 0)
    "ALTER TABLE epochs ADD COLUMN IF NOT EXISTS resets BIGINT NOT NULL DEFAULT 0",
    # one index only (every /predict inserts here): window reads, trims and resets all go by epoch;
    # ids come from one sequence without a per-backend cache, so they follow commit order closely
    """CREATE TABLE IF NOT EXISTS window_rows (
        id BIGSERIAL NOT NULL,
        epoch BIGINT NOT NULL,
        x BYTEA NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS window_rows_epoch ON window_rows (epoch, id)",
    """CREATE TABLE IF NOT EXISTS reloads (
        model_name TEXT PRIMARY KEY,
        ok BOOLEAN NOT NULL,
        version TEXT,
        message TEXT,
        at DOUBLE PRECISION NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS feedback (
        id BIGSERIAL PRIMARY KEY,
        model_name TEXT NOT NULL,
        model_version TEXT,
        created_at DOUBLE PRECISION NOT NULL,
        features TEXT NOT NULL,
        label TEXT NOT NULL,
        credential TEXT,
        client_addr TEXT,
        source TEXT)""",
    "CREATE INDEX IF NOT EXISTS feedback_model ON feedback (model_name, id)",
    # /drift/status counts the labelled rows since the served version's activation on every call
    "CREATE INDEX IF NOT EXISTS feedback_model_created ON feedback (model_name, created_at)",
)

# The /predict statement: rows enter the window only while the served record is at the generation the
# worker predicted with. One row is the hot path: a server-side prepared statement run through libpq
# directly (psycopg.pq), which costs about half the client CPU of a cursor execute; a batch is one array.
_INSERT_ONE_NAME = b"driftloop_insert_one_if_current"
_INSERT_ONE_IF_CURRENT = (
    b"INSERT INTO window_rows (epoch, x) SELECT $1::bigint, $2::bytea FROM served "
    b"WHERE model_name = $3 AND generation = $4::bigint"
)
_INSERT_MANY_IF_CURRENT = (
    "INSERT INTO window_rows (epoch, x) SELECT %s, unnest(%s::bytea[]) FROM served "
    "WHERE model_name = %s AND generation = %s"
)

_INSERT_ONE_FORMATS = [0, 1, 0, 0]  # text, binary (the row's float64 bytes), text, text


def _scalar(cursor: psycopg.Cursor[tuple[Any, ...]]) -> Any:
    """The first column of the query's one row."""
    row = cursor.fetchone()
    assert row is not None, "the query returns one row"
    return row[0]


def _pq_error(result: PGresult, doing: str) -> str:
    message = (result.error_message or b"").decode("utf-8", "replace").strip()
    return f"{doing}: {message or pq.ExecStatus(result.status).name}"


# advisory lock keys (64-bit): one for schema creation, one per model name for its served record
_SCHEMA_LOCK = 0x64726966745F7331  # "drift_s1"


def _model_lock(model_name: str) -> int:
    return 0x6D000000_00000000 | zlib.crc32(model_name.encode("utf-8"))


@translate_errors(psycopg.Error, psycopg_pool.PoolTimeout)
class PostgresStore(StateStore):
    """All three stores in one PostgreSQL database (give it a database of its own)."""

    def __init__(
        self,
        url: str,
        window_size: int,
        prune_every: int = 256,
        connect_timeout: float = 2.0,
        retry_after: float = 2.0,
        pool_size: int = 16,
        lock_timeout_ms: int = 5000,
    ):
        from serving.store import redact_url  # the package's one redaction routine

        self.location = redact_url(url)
        self.window_size = int(window_size)
        self.prune_every = max(1, int(prune_every))
        self.connect_timeout = float(connect_timeout)
        self.retry_after = float(retry_after)
        self.pool_size = max(1, int(pool_size))
        self._conninfo = make_conninfo(
            url,
            connect_timeout=max(1, int(round(connect_timeout))),
            application_name="driftloop-serving",
            # lock_timeout, not statement_timeout: a statement that waits on a lock (e.g. DDL by
            # hand) fails instead of holding the worker, and no timer is armed per statement
            options=f"-c synchronous_commit=off -c lock_timeout={int(lock_timeout_ms)}",
        )
        self._pool_obj: psycopg_pool.ConnectionPool | None = None
        self._pool_pid: int | None = None
        self._pool_lock = threading.Lock()
        self._local = threading.local()
        self._prepared: weakref.WeakSet[psycopg.Connection] = weakref.WeakSet()
        self._schema_ready = False
        self._down_until = 0.0
        self._down_reason = ""
        self._inserts = 0
        try:  # create the tables now if the server is there; otherwise on first use
            self._run(lambda conn: None)
        except StoreUnavailable as exc:
            log.warning("%s; the app starts without it and retries", exc)

    # -- connections -------------------------------------------------------------------------------
    def _pool(self) -> psycopg_pool.ConnectionPool:
        pool = self._pool_obj
        if pool is not None and self._pool_pid == os.getpid():
            return pool
        with self._pool_lock:
            if self._pool_obj is None or self._pool_pid != os.getpid():
                # after a fork the parent's pool (its sockets and threads) is not ours: start a new one
                self._pool_obj = psycopg_pool.ConnectionPool(
                    self._conninfo,
                    min_size=1,
                    max_size=self.pool_size,
                    open=False,
                    timeout=self.connect_timeout,
                    kwargs={"autocommit": True},
                    num_workers=1,
                    name="serving-store",
                    reconnect_timeout=self.connect_timeout,  # then reconnect on demand (breaker-paced)
                )
                self._pool_obj.open(wait=False)
                self._pool_pid = os.getpid()
                self._schema_ready = False
                self._prepared = weakref.WeakSet()  # connections that have the hot insert prepared
            return self._pool_obj

    def _run(self, work: Callable[[psycopg.Connection], T], retry_read: bool = False) -> T:
        """Run `work` on a pooled connection. A dropped connection (e.g. the server restarted) is
        retried once for reads; an unreachable server opens the breaker for `retry_after` seconds."""
        if time.monotonic() < self._down_until:
            raise StoreUnavailable(self.location, self._down_reason)
        attempts = 2 if retry_read else 1
        for attempt in range(attempts):
            try:
                conn = self._connection()
                if not self._schema_ready:
                    self._create_schema(conn)
                result = work(conn)
                self._down_until = 0.0
                return result
            except psycopg_pool.PoolTimeout as exc:
                self._trip(f"no connection within {self.connect_timeout:g}s ({exc})")
                raise StoreUnavailable(self.location, self._down_reason) from exc
            except psycopg.OperationalError as exc:
                # Hand the connection back (the pool drops it if it is broken); its idle siblings
                # (same server restart) are likely broken too: test them so the next call gets a good one.
                self._release()
                self._check_idle()
                if attempt + 1 < attempts:
                    continue
                self._trip(" ".join(str(exc).split())[:300])
                raise
        raise AssertionError("unreachable")

    def _connection(self) -> psycopg.Connection:
        """This thread's connection: checked out of the pool on first use and kept, so that a request
        costs no pool checkout; handed back when it fails (the pool then replaces it)."""
        local = self._local
        conn = getattr(local, "conn", None)
        if conn is None or local.pid != os.getpid():
            conn = self._pool().getconn()
            local.conn, local.pid = conn, os.getpid()
        return conn

    def _release(self) -> None:
        local = self._local
        conn, local.conn = getattr(local, "conn", None), None
        if conn is not None and getattr(local, "pid", None) == os.getpid():
            try:
                self._pool().putconn(conn)
            except Exception:  # noqa: BLE001 - a connection the pool no longer knows: just close it
                conn.close()

    def _check_idle(self) -> None:
        try:
            self._pool().check()
        except Exception:  # noqa: BLE001 - best effort; the next call reports the real error
            log.debug("checking idle connections failed", exc_info=True)

    def _trip(self, reason: str) -> None:
        self._down_until = time.monotonic() + self.retry_after
        self._down_reason = reason

    def _create_schema(self, conn: psycopg.Connection) -> None:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))  # replicas starting together
            for statement in _SCHEMA:
                conn.execute(statement)
        self._schema_ready = True

    def close(self) -> None:
        self._release()
        with self._pool_lock:
            if self._pool_obj is not None and self._pool_pid == os.getpid():
                self._pool_obj.close()
            self._pool_obj = None

    # -- served state ------------------------------------------------------------------------------
    def generation(self, model_name: str) -> int | None:
        row = self._run(
            lambda c: c.execute("SELECT generation FROM served WHERE model_name = %s", (model_name,)).fetchone(),
            retry_read=True,
        )
        return None if row is None else int(row[0])

    def served(self, model_name: str) -> ServedRecord | None:
        return self._run(lambda c: self._served(c, model_name), retry_read=True)

    @staticmethod
    def _served(conn: psycopg.Connection, model_name: str) -> ServedRecord | None:
        row = conn.execute(
            "SELECT s.model_name, s.version, s.run_id, s.epoch, s.generation, s.activated_at, e.started_at "
            "FROM served s LEFT JOIN epochs e ON e.id = s.epoch WHERE s.model_name = %s",
            (model_name,),
        ).fetchone()
        if row is None:
            return None
        return ServedRecord(row[0], row[1], row[2], int(row[3]), int(row[4]), row[5], row[6] or row[5])

    def activate(
        self, model_name: str, version: str, run_id: str | None, if_absent: bool = False
    ) -> tuple[ServedRecord, bool]:
        def work(conn: psycopg.Connection) -> tuple[ServedRecord, bool]:
            now = time.time()
            with conn.transaction():
                conn.execute("SET LOCAL synchronous_commit = on")
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_model_lock(model_name),))
                row = conn.execute(
                    "SELECT version, epoch, generation FROM served WHERE model_name = %s", (model_name,)
                ).fetchone()
                change = activation_change(None if row is None else row[0], version, if_absent)
                if change == "run_id":
                    conn.execute("UPDATE served SET run_id = %s WHERE model_name = %s", (run_id, model_name))
                if change == "new_epoch":
                    epoch = _scalar(
                        conn.execute(
                            "INSERT INTO epochs (model_name, version, started_at) VALUES (%s, %s, %s) RETURNING id",
                            (model_name, str(version), now),
                        )
                    )
                    generation = (int(row[2]) + 1) if row is not None else 1
                    conn.execute(
                        "INSERT INTO served (model_name, version, run_id, epoch, generation, activated_at) "
                        "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (model_name) DO UPDATE SET "
                        "version = excluded.version, run_id = excluded.run_id, epoch = excluded.epoch, "
                        "generation = excluded.generation, activated_at = excluded.activated_at",
                        (model_name, str(version), run_id, epoch, generation, now),
                    )
                    # the old windows of this model name are of no further use
                    conn.execute(
                        "DELETE FROM window_rows WHERE epoch IN "
                        "(SELECT id FROM epochs WHERE model_name = %s AND id <> %s)",
                        (model_name, epoch),
                    )
                started = change == "new_epoch"
                record = self._served(conn, model_name)
            assert record is not None
            return record, started

        return self._run(work)

    def record_reload(self, model_name: str, ok: bool, version: str | None, message: str | None) -> None:
        def work(conn: psycopg.Connection) -> None:
            with conn.transaction():
                conn.execute("SET LOCAL synchronous_commit = on")
                conn.execute(
                    "INSERT INTO reloads (model_name, ok, version, message, at) VALUES (%s, %s, %s, %s, %s) "
                    "ON CONFLICT (model_name) DO UPDATE SET ok = excluded.ok, version = excluded.version, "
                    "message = excluded.message, at = excluded.at",
                    (model_name, bool(ok), version, message, time.time()),
                )

        self._run(work)

    def last_reload(self, model_name: str) -> ReloadOutcome | None:
        row = self._run(
            lambda c: c.execute(
                "SELECT ok, version, message, at FROM reloads WHERE model_name = %s", (model_name,)
            ).fetchone(),
            retry_read=True,
        )
        return None if row is None else ReloadOutcome(bool(row[0]), row[1], row[2], row[3])

    # -- drift window ------------------------------------------------------------------------------
    def add_rows(self, epoch: int, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=np.float64)
        if len(rows) == 1:
            self._run(
                lambda c: c.execute("INSERT INTO window_rows (epoch, x) VALUES (%s, %s)", (epoch, rows[0].tobytes()))
            )
        else:
            rows = rows[-self.window_size :]  # a batch larger than the window only leaves its last rows in it

            def work(conn: psycopg.Connection) -> None:
                with conn.transaction(), conn.cursor() as cur:
                    cur.executemany(
                        "INSERT INTO window_rows (epoch, x) VALUES (%s, %s)", [(epoch, r.tobytes()) for r in rows]
                    )

            self._run(work)
        self._inserts += len(rows)
        if self._inserts >= self.prune_every:
            self._inserts = 0
            self.prune(epoch)

    def add_rows_if_current(self, model_name: str, generation: int | None, epoch: int, rows: np.ndarray) -> bool:
        if generation is None:
            return False
        rows = np.ascontiguousarray(rows, dtype=np.float64)[-self.window_size :]
        if len(rows) == 1:
            params = [str(epoch).encode(), rows[0].tobytes(), model_name.encode("utf-8"), str(generation).encode()]
            added = self._run(lambda c: self._insert_one(c, params))
        else:
            added = self._run(
                lambda c: (
                    c.execute(
                        _INSERT_MANY_IF_CURRENT, (epoch, [r.tobytes() for r in rows], model_name, generation)
                    ).rowcount
                )
            )
        if added:
            self._inserts += added
            if self._inserts >= self.prune_every:
                self._inserts = 0
                self.prune(epoch)
        return added > 0

    def _insert_one(self, conn: psycopg.Connection, params: list[bytes]) -> int:
        pgconn = conn.pgconn
        if conn not in self._prepared:
            result = pgconn.prepare(_INSERT_ONE_NAME, _INSERT_ONE_IF_CURRENT)
            if result.status != pq.ExecStatus.COMMAND_OK:
                raise psycopg.OperationalError(_pq_error(result, "preparing the window insert"))
            self._prepared.add(conn)
        result = pgconn.exec_prepared(_INSERT_ONE_NAME, params, param_formats=_INSERT_ONE_FORMATS)
        if result.status != pq.ExecStatus.COMMAND_OK:
            raise psycopg.OperationalError(_pq_error(result, "window insert"))
        return result.command_tuples or 0

    def prune(self, epoch: int) -> None:
        """Drop the rows of the epoch that fell out of the window (older than the last window_size)."""
        self._run(
            lambda c: c.execute(
                "DELETE FROM window_rows WHERE epoch = %s AND id < (SELECT id FROM window_rows WHERE epoch = %s "
                "ORDER BY id DESC OFFSET %s LIMIT 1)",
                (epoch, epoch, self.window_size - 1),
            )
        )

    def window_snapshot(self, epoch: int, size: int) -> WindowSnapshot:
        rows = self._run(
            lambda c: c.execute(
                "SELECT id, x FROM window_rows WHERE epoch = %s ORDER BY id DESC LIMIT %s", (epoch, int(size))
            ).fetchall(),
            retry_read=True,
        )
        return snapshot_from_rows(rows)

    def reset_window(self, epoch: int) -> WindowReset:
        def work(conn: psycopg.Connection) -> WindowReset:
            with conn.transaction():
                conn.execute("SET LOCAL synchronous_commit = on")
                dropped = conn.execute("DELETE FROM window_rows WHERE epoch = %s", (epoch,)).rowcount
                row = conn.execute(
                    "UPDATE epochs SET resets = resets + 1 WHERE id = %s RETURNING resets", (epoch,)
                ).fetchone()
            return WindowReset(dropped, int(row[0]) if row else 0)

        return self._run(work)

    def drift_counts(self, epoch: int) -> DriftCounts:
        row = self._run(
            lambda c: c.execute(
                "SELECT e.resets, "
                "(SELECT COUNT(*) FROM feedback WHERE model_name = e.model_name), "
                "(SELECT COUNT(*) FROM feedback WHERE model_name = e.model_name AND created_at >= e.started_at) "
                "FROM epochs e WHERE e.id = %s",
                (epoch,),
            ).fetchone(),
            retry_read=True,
        )
        return counts_from_row(row)

    # -- feedback ----------------------------------------------------------------------------------
    def add_feedback(
        self,
        model_name: str,
        model_version: str | None,
        rows: np.ndarray,
        labels: Sequence[int | str],
        provenance: FeedbackProvenance | None = None,
    ) -> int:
        params = feedback_params(model_name, model_version, rows, labels, provenance)

        def work(conn: psycopg.Connection) -> None:
            with conn.transaction(), conn.cursor() as cur:
                cur.execute("SET LOCAL synchronous_commit = on")
                cur.executemany(
                    "INSERT INTO feedback (model_name, model_version, created_at, features, label, "
                    "credential, client_addr, source) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                    params,
                )

        self._run(work)
        return len(params)

    def iter_feedback_records(self, model_name: str) -> Iterator[FeedbackRecord]:
        rows = self._run(
            lambda c: c.execute(
                f"SELECT {FEEDBACK_COLUMNS} FROM feedback WHERE model_name = %s ORDER BY id", (model_name,)
            ).fetchall(),
            retry_read=True,
        )
        for row in rows:
            yield feedback_record(row)

    def count_feedback(self, model_name: str) -> int:
        return int(
            self._run(
                lambda c: _scalar(c.execute("SELECT COUNT(*) FROM feedback WHERE model_name = %s", (model_name,))),
                retry_read=True,
            )
        )
