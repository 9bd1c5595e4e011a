"""The one timestamp format of the app's answers, logs and files: ISO 8601 UTC to the second."""

from __future__ import annotations

import time


def iso_utc(ts: float | None = None) -> str:
    """A Unix time (default: now) as ISO 8601 UTC, e.g. 2026-01-31T12:00:00Z."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if ts is None else ts))
