"""Code run in child processes by the store tests (spawned: it must be importable by module name)."""

from __future__ import annotations

import os

import numpy as np


def start_store(path, barrier, results, hard_links: bool = True):
    """Open (create) the state file at the same moment as the other children and write one row."""
    from serving.store import sqlite

    if not hard_links:  # a file system without them: the store renames under a lock instead

        def no_link(src, dst):
            raise PermissionError(1, "Operation not permitted")

        sqlite.os.link = no_link
    barrier.wait()
    try:
        store = sqlite.SQLiteStore(path, window_size=100, checkpoint_seconds=0)
        store.add_feedback("iris", "1", np.array([[float(os.getpid()), 0.0]]), [0])
        results.put(("ok", os.getpid()))
    except Exception as exc:  # noqa: BLE001 - reported to the test
        results.put(("error", repr(exc)))


def write_rows(url, epoch, start, n):
    """One worker adding rows to a shared window, one request at a time."""
    from serving.store import open_store

    store = open_store(url, window_size=1000)
    for i in range(start, start + n):
        store.add_rows(epoch, np.array([[float(i), 0.0]]))


def start_replica(url, version, barrier, queue):
    """A replica starting at the same moment as the others: creates the schema, adopts `version`
    unless another replica's record is there first."""
    from serving.store import open_store

    barrier.wait(60)
    store = open_store(url, window_size=100)
    record, started = store.activate("m", version, f"run-{version}", if_absent=True)
    queue.put((record.version, record.epoch, record.generation, started))
