"""The interfaces of the serving state store and the records it returns. No driver and no Flask here.

Three small interfaces, implemented together by each backend (serving/store/sqlite.py,
serving/store/postgres.py):

- `ServedStateStore`: which model version the app serves (the 'desired version' record every worker
  checks cheaply on each request), its drift-window epoch, a generation counter that changes on
  every switch, and the outcome of the last reload attempt. This record, not the registry alias, is
  what a starting or restarting worker serves; only an admin reload rewrites it (serving/manager.py).
- `WindowStore`: the drift window, rows of valid, predicted inputs tagged with the epoch (one epoch
  per activation of a model version). A new epoch is a new, empty window. Row ids grow within an
  episode; each epoch counts its resets (POST /drift/reset: a new drift episode), so (epoch, resets, first and
  last row id) names the rows a drift test saw.
- `FeedbackStore`: labelled rows (features + true label) for retraining, each with its provenance
  (received time, credential kind, client address, caller-given source); kept across reloads.

Every backend raises `StoreUnavailable` (never its driver's exceptions) when it cannot reach or use
its storage, so the app can keep answering predictions and say which store is down.
"""

from __future__ import annotations

import abc
import functools
import inspect
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np


class StoreUnavailable(RuntimeError):
    """The state store cannot be reached or used right now; `store` names it (credentials removed)."""

    def __init__(self, store: str, reason: str):
        super().__init__(f"the serving state store {store} is unavailable: {reason}")
        self.store = store
        self.reason = reason


class StateFileError(RuntimeError):
    """The state file exists but is no usable serving state (empty, not SQLite, truncated, damaged,
    another application's). The app refuses to start instead of starting empty: the file holds the
    feedback rows people paid for and the served-version record. Not an outage (`StoreUnavailable`):
    waiting does not help, a person has to decide. A RuntimeError, so that gunicorn's master prints
    it as "Error: ..." and exits when its start-up check raises it."""

    def __init__(self, path: str | os.PathLike[str], problem: str, advice: str | None = None):
        self.path = str(path)
        self.problem = problem
        self.advice = advice or (
            f"Restore it from a backup, or move it aside together with any {self.path}-wal and "
            f"{self.path}-shm files next to it (e.g. mv {self.path} {self.path}.broken) to start with an "
            "empty state: its feedback rows, drift window and served-version record are then no longer "
            "used by the app"
        )
        super().__init__(
            f"serving state file {self.path} {problem}. The app did not start and changed "
            f"nothing in it. {self.advice}; the app never deletes or rewrites it by itself."
        )


@dataclass(frozen=True)
class ServedRecord:
    model_name: str
    version: str
    run_id: str | None
    epoch: int
    generation: int
    activated_at: float
    epoch_started_at: float


@dataclass(frozen=True)
class ReloadOutcome:
    ok: bool
    version: str | None
    message: str | None
    at: float


@dataclass(frozen=True)
class WindowSnapshot:
    """The window as read for one drift test: its rows (n, k) float64, oldest first, and the store
    ids of its oldest and newest row (None when it is empty). Ids grow within an episode (epoch and
    reset count; after a reset SQLite may hand out ids again), so (epoch, resets, first_row, last_row)
    names the rows tested."""

    rows: np.ndarray
    first_row: int | None
    last_row: int | None


@dataclass(frozen=True)
class WindowReset:
    dropped: int  # rows removed from the window
    resets: int  # the epoch's reset count after this one (1 after the first reset)


@dataclass(frozen=True)
class DriftCounts:
    """What /drift/status reports next to the statistics, read in one query: the epoch's reset count
    and the labelled feedback rows of its model name, all and those received at or after the epoch's
    activation (`epochs.started_at`, the same instant as `served.activated_at` of that activation)."""

    window_resets: int
    labelled_rows: int
    labelled_rows_since_served: int


@dataclass(frozen=True)
class FeedbackProvenance:
    """Where a feedback request came from. `credential`: the kind of bearer token that sent it
    ("feedback" or "admin"); `client_addr`: the peer address the app saw; `source`: the caller's own
    optional tag (validated by serving/inputs.py). The received time is the row's `created_at`."""

    credential: str | None = None
    client_addr: str | None = None
    source: str | None = None


@dataclass(frozen=True)
class FeedbackRecord:
    features: list[float]
    label: int | str
    model_version: str | None
    created_at: float  # Unix time of receipt (UTC)
    credential: str | None  # None for rows stored before provenance was recorded
    client_addr: str | None
    source: str | None


class ServedStateStore(abc.ABC):
    @abc.abstractmethod
    def generation(self, model_name: str) -> int | None:
        """The change counter of the served record (cheap; called on every request)."""

    @abc.abstractmethod
    def served(self, model_name: str) -> ServedRecord | None: ...

    @abc.abstractmethod
    def activate(
        self, model_name: str, version: str, run_id: str | None, if_absent: bool = False
    ) -> tuple[ServedRecord, bool]:
        """Make `version` the served one. Atomic; a new epoch (an empty window) only when the version
        changes. With `if_absent`, only when there is no served record yet (a first start): an
        existing record is returned unchanged. Returns (record, whether a new epoch was started)."""

    @abc.abstractmethod
    def record_reload(self, model_name: str, ok: bool, version: str | None, message: str | None) -> None: ...

    @abc.abstractmethod
    def last_reload(self, model_name: str) -> ReloadOutcome | None: ...

    def clear_failed_reload(self, model_name: str, failed_at: float, version: str, message: str) -> bool:
        """Mark the failed reload recorded at `failed_at` as settled (ok, `version`, `message`) unless
        another outcome was recorded since; True if it was. Backends override this with one
        conditional UPDATE; this fallback has a short read-then-write window."""
        last = self.last_reload(model_name)
        if last is None or last.ok or last.at != failed_at:
            return False
        self.record_reload(model_name, True, version, message)
        return True


class WindowStore(abc.ABC):
    @abc.abstractmethod
    def add_rows(self, epoch: int, rows: np.ndarray) -> None: ...

    @abc.abstractmethod
    def window_snapshot(self, epoch: int, size: int) -> WindowSnapshot:
        """The last `size` rows of the epoch, oldest first, with the ids of the oldest and newest."""

    def window(self, epoch: int, size: int) -> np.ndarray:
        """The last `size` rows of the epoch, oldest first, as a float64 array (n, k)."""
        return self.window_snapshot(epoch, size).rows

    @abc.abstractmethod
    def reset_window(self, epoch: int) -> WindowReset:
        """Empty the window of the epoch and count the reset (a new drift episode), atomically;
        returns the rows dropped and the epoch's reset count after it."""

    @abc.abstractmethod
    def drift_counts(self, epoch: int) -> DriftCounts:
        """The epoch's reset count and its model name's labelled rows (one query; zeros for an
        unknown epoch)."""


class FeedbackStore(abc.ABC):
    @abc.abstractmethod
    def add_feedback(
        self,
        model_name: str,
        model_version: str | None,
        rows: np.ndarray,
        labels: Sequence[int | str],
        provenance: FeedbackProvenance | None = None,
    ) -> int: ...

    @abc.abstractmethod
    def iter_feedback_records(self, model_name: str) -> Iterator[FeedbackRecord]:
        """Every feedback row of the model name with its provenance, oldest first."""

    @abc.abstractmethod
    def count_feedback(self, model_name: str) -> int: ...


class StateStore(ServedStateStore, WindowStore, FeedbackStore):
    """All three interfaces in one backend (what the app is given)."""

    #: a description of where the state lives, safe to show (no password)
    location: str = ""

    def close(self) -> None:
        """Release connections held by this process (optional)."""

    def add_rows_if_current(self, model_name: str, generation: int | None, epoch: int, rows: np.ndarray) -> bool:
        """Add the rows to the epoch's window only if the served record's generation is still
        `generation`; True if they were added. The /predict hot path: one store round trip where a
        backend can check and insert at once (PostgreSQL overrides this)."""
        current = self.generation(model_name)
        if current is None or current != generation:
            return False
        self.add_rows(epoch, rows)
        return True


# How rows are stored, the same in every backend: a window row is its float64 bytes; a feedback
# row's features and label are JSON text.
FEEDBACK_COLUMNS = "features, label, model_version, created_at, credential, client_addr, source"


def window_array(blobs_newest_first: Sequence[Sequence[Any]], column: int = 0) -> np.ndarray:
    """(n, k) float64, oldest first, from query rows read newest first whose `column` is the row's bytes."""
    if not blobs_newest_first:
        return np.empty((0, 0), dtype=np.float64)
    data = np.frombuffer(b"".join(bytes(b[column]) for b in reversed(blobs_newest_first)), dtype=np.float64)
    return data.reshape(len(blobs_newest_first), -1)


def snapshot_from_rows(rows_newest_first: Sequence[Sequence[Any]]) -> WindowSnapshot:
    """A WindowSnapshot from query rows `(id, x)` read newest first."""
    if not rows_newest_first:
        return WindowSnapshot(window_array(()), None, None)
    return WindowSnapshot(
        window_array(rows_newest_first, column=1), int(rows_newest_first[-1][0]), int(rows_newest_first[0][0])
    )


def counts_from_row(row: Sequence[Any] | None) -> DriftCounts:
    """DriftCounts from a query row (resets, labelled rows, labelled rows since the activation)."""
    if row is None:
        return DriftCounts(0, 0, 0)
    return DriftCounts(int(row[0] or 0), int(row[1] or 0), int(row[2] or 0))


def feedback_params(
    model_name: str,
    model_version: str | None,
    rows: np.ndarray,
    labels: Sequence[int | str],
    provenance: FeedbackProvenance | None,
) -> list[tuple[Any, ...]]:
    """Insert parameters in the order of (model_name, model_version, created_at, FEEDBACK columns
    features.. source), one tuple per row."""
    now = time.time()
    p = provenance or FeedbackProvenance()
    return [
        (
            model_name,
            model_version,
            now,
            json.dumps([float(v) for v in row]),
            json.dumps(label),
            p.credential,
            p.client_addr,
            p.source,
        )
        for row, label in zip(np.asarray(rows, dtype=np.float64), labels, strict=False)
    ]


def feedback_record(row: Sequence[Any]) -> FeedbackRecord:
    """A FeedbackRecord from a query row of FEEDBACK_COLUMNS."""
    features, label, version, created_at, credential, client_addr, source = row
    return FeedbackRecord(json.loads(features), json.loads(label), version, created_at, credential, client_addr, source)


def activation_change(current_version: str | None, version: str, if_absent: bool) -> str:
    """What `activate` does, given the served record's current version (None: no record): "keep"
    (if_absent and there is a record), "run_id" (same version: only its run id is updated) or
    "new_epoch" (a new version: new epoch, generation + 1, the old windows dropped). The one rule of
    every backend; each runs it inside its own lock and transaction."""
    if current_version is not None and if_absent:
        return "keep"
    if current_version is not None and current_version == str(version):
        return "run_id"
    return "new_epoch"


# The methods of the three interfaces: a backend's driver errors are translated in these only.
INTERFACE_METHODS = (
    "generation",
    "served",
    "activate",
    "record_reload",
    "last_reload",
    "clear_failed_reload",
    "add_rows",
    "add_rows_if_current",
    "window",
    "window_snapshot",
    "reset_window",
    "drift_counts",
    "add_feedback",
    "iter_feedback_records",
    "count_feedback",
)


C = TypeVar("C", bound=type)


def translate_errors(*driver_errors: type[BaseException]) -> Callable[[C], C]:
    """Class decorator for a backend: its interface methods raise `StoreUnavailable` (naming
    `self.location`) instead of the driver's `driver_errors`. Generators are wrapped so that an error
    while iterating is translated too."""

    def wrap(method: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.isgeneratorfunction(method):

            @functools.wraps(method)
            def gen_wrapper(self: Any, *args: Any, **kwargs: Any) -> Iterator[Any]:
                try:
                    yield from method(self, *args, **kwargs)
                except driver_errors as exc:
                    raise StoreUnavailable(self.location, _reason(exc)) from exc

            return gen_wrapper

        @functools.wraps(method)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return method(self, *args, **kwargs)
            except driver_errors as exc:
                raise StoreUnavailable(self.location, _reason(exc)) from exc

        return wrapper

    def decorate(cls: C) -> C:
        for name in INTERFACE_METHODS:
            if name in cls.__dict__:
                setattr(cls, name, wrap(cls.__dict__[name]))
        return cls

    return decorate


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]
