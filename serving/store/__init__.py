"""State shared by all workers of the serving app (and, with PostgreSQL, by all replicas), kept across
restarts. `open_store(url, window_size)` picks the backend from `SERVING_STORE_URL`:

- `sqlite:///<path>` (relative) or `sqlite:////<absolute path>`: one SQLite file in WAL mode, the
  embedded default (every worker of one host);
- `postgresql://user:password@host:port/db` (or `postgres://`): a PostgreSQL database, one window
  for every worker of every replica (Kubernetes).

Both implement the same interfaces (serving/store/base.py) with the same semantics; the contract tests
in tests/serving/test_store.py run against both.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

from serving.store.base import (
    FeedbackProvenance,
    FeedbackRecord,
    ReloadOutcome,
    ServedRecord,
    StateFileError,
    StateStore,
    StoreUnavailable,
)
from serving.store.sqlite import SQLiteStore

SQLITE_PREFIX = "sqlite:///"
POSTGRES_SCHEMES = ("postgresql", "postgres")

__all__ = [
    "FeedbackProvenance",
    "FeedbackRecord",
    "ReloadOutcome",
    "ServedRecord",
    "StateStore",
    "StoreUnavailable",
    "StateFileError",
    "SQLiteStore",
    "open_store",
    "check_store_url",
    "redact_url",
]


def check_store_url(url: str) -> str:
    """The backend a store URL names ("sqlite" or "postgresql"); ValueError naming what is wrong
    (never echoing a password)."""
    if url.startswith(SQLITE_PREFIX):
        if not url[len(SQLITE_PREFIX) :]:
            raise ValueError("sqlite:/// needs a file path, e.g. sqlite:///.stack/serving/serving.sqlite3")
        return "sqlite"
    scheme = urlsplit(url).scheme
    if scheme in POSTGRES_SCHEMES:
        parts = urlsplit(url)
        if not parts.hostname and "host=" not in parts.query:
            raise ValueError(f"{redact_url(url)} names no host")
        return "postgresql"
    raise ValueError(
        f"unsupported store URL {redact_url(url)!r}: use sqlite:///<path> or postgresql://user@host:port/db"
    )


def redact_url(url: str) -> str:
    """The URL without its password (for messages, logs and /health)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit((parts.scheme, f"{user}:***@{netloc}", parts.path, parts.query, parts.fragment))


def open_store(url: str, window_size: int, **options: Any) -> StateStore:
    if check_store_url(url) == "sqlite":
        return SQLiteStore(url[len(SQLITE_PREFIX) :], window_size, **options)
    from serving.store.postgres import PostgresStore  # psycopg only where it is used

    return PostgresStore(url, window_size, **options)
