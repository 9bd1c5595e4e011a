"""Which model a worker serves, and how all workers agree on it. No Flask here.

The shared store holds one 'served' record per model name: version, drift-window epoch and a
generation counter. Every request checks the generation: `sync()` (one indexed SELECT) before it
answers, or, for /predict on a settled worker, `predict_and_record()` in the same statement as its
window insert. When it differs from what this worker last saw, the worker reads the record and, if the
version changed, loads that version before answering. So after `POST /model/reload` returns on one worker, the next
request on any worker is answered by the new version, and no request is dropped: the swap is one
attribute assignment and a request keeps the `Active` object it started with.

If a load fails the worker keeps the model it has, remembers the error (shown by /health and
/model/info) and retries at most every `retry_seconds`, also when it has no model at all yet.

MLflow down: a worker that (re)starts or follows the record meanwhile serves the recorded version
from its verified local copy (serving/model_cache.py); /health says so ("degraded"). What waits for
MLflow (a model from a local copy, a reload that failed) is looked at again by one background thread
per worker, at most every `retry_seconds` and never inside a request: the model is reloaded from the
registry once it answers, and a failed reload is settled once the alias points at the served version
again, so /health returns to "ok" without an admin call. If the alias points elsewhere it stays
"degraded" and says what to do: the copy never moves the served version, nor does the watcher.

The registry decides nothing by itself: a starting or restarting worker serves the version in the
served record, whatever the registry alias points to now. Only `reload()` (the authenticated
`POST /model/reload`, called by the pipeline's deploy step or an admin) moves the record to the alias
target. The alias is adopted without a reload only on the very first start, when there is no served
record yet. If the recorded version cannot be loaded the worker does not fall back to the alias
target (that would let whoever can break or delete a model version in the registry choose the
served model): it has no model (503, the reason names the version), retries every `retry_seconds`,
and an admin reload is the way to another version.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from serving import metrics
from serving.model import REGISTRY, Label, LoadedModel, ModelLoader, ModelLoadError
from serving.schemas import LoadErrorInfo, Reload, StoreInfo
from serving.store import ReloadOutcome, ServedRecord, StateStore, StoreUnavailable
from serving.timestamps import iso_utc

log = logging.getLogger(__name__)


class OneThread:
    """At most one live daemon thread running `target` in this process. The pid is remembered because
    gunicorn forks workers: a thread object inherited from the master is not running in the worker."""

    def __init__(self, name: str, target: Callable[[], None]) -> None:
        self.name, self.target = name, target
        self._thread: threading.Thread | None = None
        self._pid: int | None = None
        self._lock = threading.Lock()

    @property
    def running(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive() and self._pid == os.getpid()

    def start(self) -> None:
        """Start the thread unless it runs already; returns at once."""
        with self._lock:
            if self.running:
                return
            self._thread = threading.Thread(target=self.target, name=self.name, daemon=True)
            self._pid = os.getpid()
            self._thread.start()


@dataclass(frozen=True)
class Active:
    model: LoadedModel
    epoch: int
    epoch_started_at: float


class ModelManager:
    def __init__(self, store: StateStore, loader: ModelLoader, retry_seconds: float = 15.0):
        self.store = store
        self.loader = loader
        self.name = loader.model_name
        self.retry_seconds = retry_seconds
        self.active: Active | None = None
        self.load_error: ModelLoadError | None = None
        self.load_error_at: float | None = None
        self._seen_generation: int | None = None
        self._next_retry = 0.0
        self._behind_flag = False
        self._lock = threading.RLock()
        self.store_error: StoreUnavailable | None = None  # the last failure to read the served record
        self.store_error_at: float | None = None
        # what the registry watcher (below) last found, for /health; None when nothing waits for MLflow
        self.registry_note: str | None = None
        self.registry_check_seconds = max(float(retry_seconds), 1.0)
        self._next_registry_check = 0.0
        self._watcher = OneThread("registry-watch", self._watch)
        self._follower = OneThread("follow-record", self._follow)

    # -- per request -----------------------------------------------------------------------------
    def sync(self, wait: bool = True) -> Active | None:
        """Follow the shared served record; one cheap SELECT unless something changed.

        With `wait=False` (/health) a change is followed by a background thread and the model this
        worker has now is returned at once: a model load takes seconds, longer than a readiness
        probe's timeout, and a probe must not fail because another worker or replica just reloaded.

        Never raises for a store outage: the worker keeps serving what it has (remembered in
        `store_error` for /health) and follows the record again once the store answers."""
        if wait and self.following:
            with self._lock:  # the background follow holds the lock while it loads: answer with its result
                pass
        try:
            generation = self.store.generation(self.name)
            if generation is not None and generation == self._seen_generation and not self._behind:
                self._store_ok()
                return self.active
            if generation == self._seen_generation and time.monotonic() < self._next_retry:
                self._store_ok()
                return self.active  # not ready or behind, and the next retry is not due yet
            if not wait:
                self._store_ok()
                self._follower.start()
                return self.active
            with self._lock:
                self._sync_locked()
        except StoreUnavailable as exc:
            self._store_failed(exc)
            return self.active
        self._store_ok()
        return self.active

    def current(self) -> Active | None:
        """The model to answer with, without a store call when this worker is settled (it has a model,
        follows the record, no background follow is loading and the store answered last time):
        `predict_and_record` then checks the record in the same round trip as its insert. Otherwise
        `sync()`, which waits for a background follow."""
        if self.active is not None and not self._behind_flag and self.store_error is None and not self.following:
            return self.active
        return self.sync()

    def predict_and_record(self, active: Active, X: np.ndarray) -> tuple[Active, list[Label], bool]:
        """Predict with `active`, then add the rows to its window if the served record has not moved
        since this worker last read it (one store round trip). If it moved (a reload on another worker
        or replica), follow it and predict again with what is served now, so the answer never comes
        from a version older than the record at the time of the request. Returns (the Active that
        answered, the predictions, whether the rows entered the window: not during a store outage)."""
        for _ in range(3):
            predictions = active.model.predict(X)
            try:
                if self.store.add_rows_if_current(self.name, self._seen_generation, active.epoch, X):
                    return active, predictions, True
            except StoreUnavailable as exc:
                self._store_failed(exc, "window_insert")
                return active, predictions, False
            followed = self.sync()
            if followed is None:
                return active, predictions, False
            active = followed
        return active, predictions, False  # the record kept moving: answer, do not record

    @property
    def following(self) -> bool:
        """A background follow of the served record (started by `sync(wait=False)`) is running."""
        return self._follower.running

    def _follow(self) -> None:
        try:
            with self._lock:
                self._sync_locked()
        except StoreUnavailable as exc:
            self._store_failed(exc)
        except Exception:  # noqa: BLE001 - a request's sync() will try again and report it
            log.exception("following the served record failed")

    def _store_ok(self) -> None:
        if self.store_error is not None:
            log.info("state store %s answers again", self.store.location)
            self.store_error = None
            self.store_error_at = None

    def _store_failed(self, exc: StoreUnavailable, operation: str = "sync") -> None:
        metrics.STORE_ERRORS.labels(operation).inc()
        if self.store_error is None:
            log.warning("%s; serving the loaded model meanwhile", exc)
        self.store_error = exc
        self.store_error_at = time.time()

    @property
    def _behind(self) -> bool:
        return self._behind_flag or self.active is None

    def _sync_locked(self) -> None:
        now = time.monotonic()
        record = self.store.served(self.name)
        if record is None:
            # nobody serves anything yet (e.g. there was no champion at start-up): try the champion
            if self.active is None and now >= self._next_retry:
                self._try(self._adopt_champion)
            return
        active = self.active
        if active is not None and active.model.version == record.version:
            if active.epoch != record.epoch:
                self.active = Active(active.model, record.epoch, record.epoch_started_at)
            self._seen_generation = record.generation
            self._behind_flag = False
            return
        if record.generation == self._seen_generation and now < self._next_retry:
            return
        self._seen_generation = record.generation
        try:
            model = self._load_recorded(record)
        except ModelLoadError as exc:
            self._behind_flag = True
            self._fail(exc)
            return
        self.active = Active(model, record.epoch, record.epoch_started_at)
        self._behind_flag = False
        self._clear_error()
        log.info("worker follows %s version %s (epoch %s)", self.name, record.version, record.epoch)
        self.watch_registry()

    # -- start-up --------------------------------------------------------------------------------
    def startup(self) -> None:
        """Serve the version of the app's served record; the alias target only when there is none yet
        (the first start ever). Never asks the registry which version to serve otherwise."""
        with self._lock:
            record = self.store.served(self.name)
            if record is None:
                self._try(self._adopt_champion)
                return
            self._seen_generation = record.generation
            self._try(lambda: self._activate_recorded(record))
        self.watch_registry()

    def _load_recorded(self, record: ServedRecord) -> LoadedModel:
        try:
            return self.loader.load(record.version)
        except ModelLoadError as exc:
            raise ModelLoadError(
                f"served version {record.version} of '{self.name}' (the app's served record) cannot be loaded: "
                f"{exc.message}. The app does not switch to the '{self.loader.alias}' alias by itself: "
                "POST /model/reload (admin) moves it to the alias target",
                exc.kind,
                record.version,
            ) from exc

    def _activate_recorded(self, record: ServedRecord) -> None:
        model = self._load_recorded(record)
        self.active = Active(model, record.epoch, record.epoch_started_at)
        self._seen_generation = record.generation
        self._behind_flag = False

    def _adopt_champion(self) -> None:
        """First start ever: the alias target becomes the served record, unless another worker wrote a
        record meanwhile (then that record is served)."""
        model = self.loader.load()
        record, _ = self.store.activate(self.name, model.version, model.run_id, if_absent=True)
        if record.version != model.version:
            model = self._load_recorded(record)
        self.active = Active(model, record.epoch, record.epoch_started_at)
        self._seen_generation = record.generation
        self._behind_flag = False
        last = self.store.last_reload(self.name)
        if last is not None and not last.ok:
            self.store.record_reload(self.name, True, model.version, None)

    def _try(self, action: Callable[[], None]) -> bool:
        try:
            action()
        except ModelLoadError as exc:
            self._fail(exc)
            return False
        except StoreUnavailable as exc:  # which version to serve is in the store: wait for it
            self._store_failed(exc)
            self._fail(ModelLoadError(f"{exc}; the served version is recorded there", "unavailable"))
            return False
        self._clear_error()
        return True

    def _fail(self, exc: ModelLoadError) -> None:
        self.load_error = exc
        self.load_error_at = time.time()
        self._next_retry = time.monotonic() + self.retry_seconds
        log.warning("model load failed: %s", exc.message)

    def _clear_error(self) -> None:
        self.load_error = None
        self.load_error_at = None

    # -- admin reload ----------------------------------------------------------------------------
    def reload(self) -> Reload:
        """Move the app to the current alias target. Raises ModelLoadError (the old model stays)."""
        with self._lock:
            previous = self.active
            try:
                version, run_id = self.loader.resolve()
                if previous is not None and previous.model.version == version and previous.model.source == REGISTRY:
                    model = previous.model
                else:  # never a local copy: a reload is a decision taken against the registry
                    model = self.loader.load_from_registry(version)
            except ModelLoadError as exc:
                self.store.record_reload(self.name, False, exc.version, exc.message)
                raise
            record, restarted = self.store.activate(self.name, model.version, model.run_id)
            self.active = Active(model, record.epoch, record.epoch_started_at)
            self._seen_generation = record.generation
            self._clear_error()
            self.store.record_reload(self.name, True, model.version, None)
        return {
            "status": "reloaded",
            "name": self.name,
            "version": model.version,
            "previous_version": previous.model.version if previous else None,
            "changed": previous is None or previous.model.version != model.version,
            "run_id": model.run_id,
            "alias": model.alias,
            "backend": model.backend,
            "loaded_at": model.loaded_at,
            "window_restarted": restarted,
            "generation": record.generation,
        }

    # -- back to the registry after an MLflow outage -----------------------------------------------
    def watch_registry(self, reload_failed: bool = False) -> None:
        """Start the background check if something waits for MLflow: the model came from a local copy,
        or (as the caller read it from the store) the last reload failed. Returns at once."""
        active = self.active
        if not reload_failed and (active is None or active.model.source == REGISTRY):
            return
        self._watcher.start()

    def _watch(self) -> None:
        while True:
            wait = self._next_registry_check - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            self._next_registry_check = time.monotonic() + self.registry_check_seconds
            try:
                pending = self.check_registry()
            except Exception:  # noqa: BLE001 - the watcher must outlive any surprise; next round retries
                log.exception("registry check failed")
                pending = True
            if not pending:
                return

    def check_registry(self) -> bool:
        """One look at MLflow for what waits on it; True while something still does. Slow MLflow calls
        happen here, outside the manager's lock and outside any request."""
        notes: list[str] = []
        active = self.active
        pending = False
        if active is not None and active.model.source != REGISTRY:
            version = active.model.version
            try:
                model = self.loader.load_from_registry(version)
            except ModelLoadError as exc:
                pending = True
                if exc.kind != "unavailable":
                    notes.append(
                        f"MLflow answers but version {version} cannot be loaded from it ({exc.message}); "
                        "the local copy keeps serving"
                    )
            else:
                with self._lock:
                    current = self.active
                    if current is not None and current.model.version == version and current.model.source != REGISTRY:
                        self.active = Active(model, current.epoch, current.epoch_started_at)
                        log.info(
                            "MLflow answers again: %s version %s is loaded from the registry, no longer from "
                            "its local copy",
                            self.name,
                            version,
                        )
        try:
            last = self.store.last_reload(self.name)
            if last is not None and not last.ok:
                still, note = self._settle_failed_reload(last)
                pending = pending or still
                if note:
                    notes.append(note)
        except StoreUnavailable:
            pending = True
        self.registry_note = "; ".join(notes) or None
        return pending

    def _settle_failed_reload(self, last: ReloadOutcome) -> tuple[bool, str | None]:
        """A failed reload keeps /health "degraded". Once the registry answers and its alias points at
        the served version there is nothing left to do: the outcome is marked settled (ok, with a
        message saying why). If the alias points elsewhere, say what to do."""
        alias = self.loader.alias
        try:
            target, _run_id = self.loader.resolve()
        except ModelLoadError as exc:
            if exc.kind == "unavailable":
                return True, (
                    f"MLflow is still unreachable (checked every {self.registry_check_seconds:g} s); "
                    f"this clears by itself once it answers and alias '{alias}' still points at the "
                    "served version"
                )
            return True, (
                f"the registry alias '{alias}' points at no version ({exc.message}): set it and "
                "POST /model/reload (admin)"
            )
        served = self.store.served(self.name)
        if served is None:
            return False, None  # nothing is served yet: the worker retries the alias target itself
        if served.version != target:
            return True, (
                f"the registry alias '{alias}' points at version {target} while version {served.version} "
                f"is served: POST /model/reload (admin) to serve version {target}, or point the alias back "
                f"at version {served.version}"
            )
        failed_at = iso_utc(last.at)
        message = (
            f"settled without a reload: the reload at {failed_at} "
            f"failed ({(last.message or '')[:300]}); MLflow answers again and alias '{alias}' still points at "
            f"the served version {served.version}"
        )
        if self.store.clear_failed_reload(self.name, last.at, served.version, message):
            log.info(
                "the failed reload is settled: alias '%s' still points at the served version %s", alias, served.version
            )
        return False, None

    # -- status ------------------------------------------------------------------------------------
    def last_reload(self) -> ReloadOutcome | None:
        return self.store.last_reload(self.name)

    def store_info(self) -> StoreInfo:
        err = self.store_error
        info: StoreInfo = {"ok": err is None, "location": self.store.location}
        if err is not None:
            info["message"] = str(err)
            info["since"] = iso_utc(self.store_error_at)
        return info

    def error_info(self) -> LoadErrorInfo | None:
        err = self.load_error
        if err is None:
            return None
        return {"message": err.message, "kind": err.kind, "version": err.version, "at": iso_utc(self.load_error_at)}
