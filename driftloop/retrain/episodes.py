"""When does drift start a retrain? The decision of the drift watcher, as a pure function.

The watcher (``driftloop.retrain.drift_events.DriftEventTrigger``) looks at the serving app's
``GET /drift/status`` every poll interval. Deciding at every look would multiply false alarms: a
window of the last ``window_size`` rows polled every minute is re-tested many times while it only
changes a little, and each test has its own false-alarm chance. So :func:`decide` applies two rules
and keeps what it needs in a small plain-JSON ``state`` (the trigger stores it in Airflow's asset
state store, so it survives a triggerer restart):

* **fresh data**: decide only on a *full* window (``samples >= window_size``) that shares no row with
  the last decided window of the same episode (``window_first_row > decided.last_row``). At most one
  decision per ``window_size`` new rows: the false-alarm rate per row stays the per-test rate divided by
  the window size, whatever the polling rate. ``make bench`` measures it.
* **one retrain per episode**: an episode is (model name, model version, window epoch, window resets).
  A new champion starts a new epoch, ``POST /drift/reset`` a new reset count: both end the episode.
  Once an episode fired, drift in it is ``already_fired`` (a rejected candidate does not retrain again
  on the same evidence; the cron and ``force`` still can).
* **no retrain storm**: a retrain learns something new only from new labels. Drift with no labelled
  row since the served version was activated, or none since the last fire, is ``blocked``: no event,
  and an alert once per (episode, label count) so a person can label data (or retrain by hand).

Nothing here imports Airflow: the benchmark and the tests call it directly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

Action = Literal["wait", "no_drift", "already_fired", "blocked", "fire"]

#: The key under which the trigger keeps the state in the asset state store.
STATE_KEY = "drift_episodes"


class BadStatus(ValueError):
    """The answer of ``GET /drift/status`` is not a drift report this watcher can decide on."""


def _int(status: dict[str, Any], key: str, *, nullable: bool = False) -> int | None:
    if key not in status:
        raise BadStatus(f"drift status has no {key!r} (is the serving app older than the watcher?)")
    value = status[key]
    if value is None and nullable:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadStatus(f"drift status {key!r} must be an integer{' or null' if nullable else ''}, got {value!r}")
    return value


@dataclass(frozen=True)
class Look:
    """One look at ``/drift/status``: what :func:`decide` needs, validated."""

    model_name: str
    model_version: str
    window_epoch: int
    window_resets: int
    window_size: int
    samples: int
    window_first_row: int | None
    window_last_row: int | None
    drift_detected: bool
    drifted_features: list[str]
    p_values: dict[str, float]
    p_adjusted: dict[str, float]
    correction: str
    threshold: float
    labelled_rows: int
    labelled_rows_since_served: int
    checked_at: str | None = None
    reason: str | None = None

    @classmethod
    def from_status(cls, status: Any) -> Look:
        """Validate a ``/drift/status`` document; :class:`BadStatus` names the first missing/wrong key."""
        if not isinstance(status, dict):
            raise BadStatus(f"drift status must be a JSON object, got {type(status).__name__}")
        for key in ("model_name", "model_version"):
            if not isinstance(status.get(key), (str, int)) or isinstance(status.get(key), bool) or status[key] == "":
                raise BadStatus(f"drift status has no {key!r} (no model loaded?)")
        drift = status.get("drift_detected")
        if not isinstance(drift, bool):
            raise BadStatus(f"drift status 'drift_detected' must be a boolean, got {drift!r}")
        threshold = status.get("threshold")
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise BadStatus(f"drift status 'threshold' must be a number, got {threshold!r}")
        features = status.get("features") or {}
        if not isinstance(features, dict):
            raise BadStatus(f"drift status 'features' must be an object, got {type(features).__name__}")
        p_values: dict[str, float] = {}
        p_adjusted: dict[str, float] = {}
        for key, info in features.items():
            if not isinstance(info, dict):
                raise BadStatus(f"drift status feature {key!r} must be an object")
            name = str(info.get("name") or key)
            if isinstance(info.get("p_value"), (int, float)):
                p_values[name] = float(info["p_value"])
            if isinstance(info.get("p_adjusted"), (int, float)):
                p_adjusted[name] = float(info["p_adjusted"])
        drifted = status.get("drifted_features")
        if drifted is None:
            drifted = [str(info.get("name") or key) for key, info in features.items() if info.get("drift")]
        if not isinstance(drifted, list):
            raise BadStatus("drift status 'drifted_features' must be a list")
        look = cls(
            model_name=str(status["model_name"]),
            model_version=str(status["model_version"]),
            window_epoch=_int(status, "window_epoch") or 0,
            window_resets=_int(status, "window_resets") or 0,
            window_size=_int(status, "window_size") or 0,
            samples=_int(status, "samples") or 0,
            window_first_row=_int(status, "window_first_row", nullable=True),
            window_last_row=_int(status, "window_last_row", nullable=True),
            drift_detected=drift,
            drifted_features=[str(n) for n in drifted],
            p_values=p_values,
            p_adjusted=p_adjusted,
            correction=str(status.get("correction") or "none"),
            threshold=float(threshold),
            labelled_rows=_int(status, "labelled_rows") or 0,
            labelled_rows_since_served=_int(status, "labelled_rows_since_served") or 0,
            checked_at=str(status["checked_at"]) if status.get("checked_at") else None,
            reason=str(status["reason"]) if status.get("reason") else None,
        )
        if look.window_size <= 0:
            raise BadStatus(f"drift status 'window_size' must be positive, got {look.window_size}")
        if look.samples > 0 and (look.window_first_row is None or look.window_last_row is None):
            raise BadStatus("drift status has samples but no window_first_row/window_last_row")
        return look

    @property
    def episode(self) -> str:
        """The identity of a drift episode: a new champion (epoch) or a reset ends it."""
        return f"{self.model_name}:{self.model_version}:{self.window_epoch}.{self.window_resets}"

    @property
    def full(self) -> bool:
        return self.samples >= self.window_size and self.window_first_row is not None

    def payload(self) -> dict[str, Any]:
        """The asset event's payload: what the DAG run needs (and shows) about this drift."""
        return {
            "episode": self.episode,
            "model_name": self.model_name,
            "model_version": self.model_version,
            "window_epoch": self.window_epoch,
            "window_resets": self.window_resets,
            "samples": self.samples,
            "window_first_row": self.window_first_row,
            "window_last_row": self.window_last_row,
            "drifted_features": list(self.drifted_features),
            "p_values": dict(self.p_values),
            "p_adjusted": dict(self.p_adjusted),
            "correction": self.correction,
            "threshold": self.threshold,
            "labelled_rows": self.labelled_rows,
            "labelled_rows_since_served": self.labelled_rows_since_served,
            "checked_at": self.checked_at,
        }


@dataclass(frozen=True)
class Decision:
    """What to do after a look. ``state`` is the new state to store (plain JSON, a fresh copy);
    ``alert`` is true when a ``blocked`` decision is new (first for this episode and label count)."""

    action: Action
    event: dict[str, Any] | None
    state: dict[str, Any]
    message: str
    alert: bool = field(default=False)


def _copy(state: dict[str, Any] | None) -> dict[str, Any]:
    state = state if isinstance(state, dict) else {}
    return {k: dict(v) for k, v in state.items() if k in ("decided", "fired", "blocked") and isinstance(v, dict)}


def decide(look: Look, state: dict[str, Any] | None) -> Decision:
    """Apply the fresh-data, one-per-episode and storm rules (module docstring) to one look."""
    new = _copy(state)
    episode = look.episode
    decided = new.get("decided") or {}
    if not look.full:
        return Decision("wait", None, new, f"{episode}: window not full ({look.samples}/{look.window_size} rows)")
    last_row = decided.get("last_row")
    if (
        decided.get("episode") == episode
        and isinstance(last_row, int)
        and look.window_first_row is not None
        and look.window_first_row <= last_row
    ):
        return Decision(
            "wait",
            None,
            new,
            f"{episode}: window starts at row {look.window_first_row}, overlapping the last decided window "
            f"(up to row {last_row}); waiting for {look.window_size} fresh rows",
        )
    new["decided"] = {"episode": episode, "last_row": look.window_last_row}
    rows = f"rows {look.window_first_row}-{look.window_last_row}"
    if not look.drift_detected:
        return Decision("no_drift", None, new, f"{episode}: no drift in {rows}")
    features = ", ".join(look.drifted_features) or "?"
    fired = new.get("fired") or {}
    if fired.get("episode") == episode:
        return Decision(
            "already_fired",
            None,
            new,
            f"{episode}: drift in {rows} ({features}); this episode already started a retrain at {fired.get('at')}",
        )
    since_fire = fired.get("labelled_rows")
    why = ""
    if look.labelled_rows_since_served == 0:
        why = f"no labelled feedback since model version {look.model_version} was served"
    elif isinstance(since_fire, int) and look.labelled_rows <= since_fire:
        why = f"no labelled feedback since the last drift retrain ({look.labelled_rows} labelled rows then and now)"
    if why:
        blocked = {"episode": episode, "labelled_rows": look.labelled_rows}
        alert = new.get("blocked") != blocked
        new["blocked"] = blocked
        return Decision(
            "blocked",
            None,
            new,
            f"drift in {look.model_name} v{look.model_version} ({features}; episode {episode}) but {why}: "
            "a retrain would learn nothing new, so none is started. Label rows of the shifted traffic "
            "(POST /feedback) and the next fresh window decides again; the cron and force=true still retrain.",
            alert,
        )
    new["fired"] = {"episode": episode, "labelled_rows": look.labelled_rows, "at": look.checked_at}
    new.pop("blocked", None)
    return Decision("fire", look.payload(), new, f"{episode}: drift in {rows} ({features}); starting a retrain", False)


def run_name(payload: dict[str, Any] | None) -> str:
    """The KFP run name of a retrain started by a drift event: the same for every DAG run of one episode,
    so a second run adopts the first one's KFP run instead of submitting another. "" without an event."""
    if not payload:
        return ""
    raw = (
        f"drift-{payload['model_name']}-v{payload['model_version']}"
        f"-e{payload['window_epoch']}-r{payload['window_resets']}"
    )
    return re.sub(r"-{2,}", "-", re.sub(r"[^a-z0-9]+", "-", raw.lower())).strip("-")[:100].rstrip("-")


PAYLOAD_KEYS = ("episode", "model_name", "model_version", "window_epoch", "window_resets")


def check_payload(payload: Any) -> dict[str, Any]:
    """The event payload a DAG run received, checked: raises ValueError naming what is missing."""
    if not isinstance(payload, dict):
        raise ValueError(f"drift event payload must be a JSON object, got {type(payload).__name__}")
    missing = [k for k in PAYLOAD_KEYS if payload.get(k) in (None, "")]
    if missing:
        raise ValueError(f"drift event payload lacks {', '.join(missing)}: {payload}")
    for key in ("window_epoch", "window_resets"):
        if isinstance(payload[key], bool) or not isinstance(payload[key], int):
            raise ValueError(f"drift event payload {key!r} must be an integer, got {payload[key]!r}")
    return payload
