"""Configuration of the serving app: environment variables, overridable by a mapping.

Every setting has an environment variable (the seed's names kept where they exist) and a default for
the embedded stack. `create_app(config)` accepts a mapping with the same keys as the environment
variables; a key in that mapping wins over the environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from driftloop.contract import CHAMPION_ALIAS, DEFAULT_MODEL_NAME, MLFLOW_TRACKING_URI_ENV
from serving.drift import CORRECTIONS, normalize_correction
from serving.store import SQLITE_PREFIX, check_store_url

BACKENDS = ("auto", "onnx", "sklearn")


class ConfigError(ValueError):
    """A setting has a value the app cannot work with."""


@dataclass(frozen=True)
class ServingConfig:
    # where the model comes from
    mlflow_tracking_uri: str = field(default="http://127.0.0.1:5000", metadata={"env": MLFLOW_TRACKING_URI_ENV})
    model_name: str = field(default=DEFAULT_MODEL_NAME, metadata={"env": "MODEL_NAME"})
    model_alias: str = field(default=CHAMPION_ALIAS, metadata={"env": "MODEL_ALIAS"})
    predict_backend: str = field(default="auto", metadata={"env": "SERVING_PREDICT_BACKEND"})
    # drift detection
    drift_threshold: float = field(default=0.05, metadata={"env": "DRIFT_THRESHOLD"})
    drift_window_size: int = field(default=100, metadata={"env": "DRIFT_WINDOW_SIZE"})
    drift_min_samples: int = field(default=0, metadata={"env": "DRIFT_MIN_SAMPLES"})  # 0 = window size
    drift_correction: str = field(default="acat", metadata={"env": "DRIFT_CORRECTION"})
    # state shared by all workers and restarts
    state_dir: str = field(default=".stack/serving", metadata={"env": "SERVING_STATE_DIR"})
    # sqlite:///<path> or postgresql://user:password@host:port/db (serving/store/__init__.py);
    # "" = sqlite:///<SERVING_DB_PATH>, whose default is <state_dir>/serving.sqlite3
    store_url: str = field(default="", metadata={"env": "SERVING_STORE_URL"})
    db_path: str = field(default="", metadata={"env": "SERVING_DB_PATH"})
    # credentials (bearer tokens; empty = the endpoints they guard are disabled)
    admin_token: str = field(default="", metadata={"env": "SERVING_ADMIN_TOKEN"})
    feedback_token: str = field(default="", metadata={"env": "SERVING_FEEDBACK_TOKEN"})
    # input limits
    max_batch: int = field(default=1000, metadata={"env": "SERVING_MAX_BATCH"})
    max_body_bytes: int = field(default=1_048_576, metadata={"env": "SERVING_MAX_BODY_BYTES"})
    # slow clients (serving/worker.py): seconds from accept to the end of the request headers, and from
    # there to the end of the body; a later request is answered 408 without reaching the app
    header_timeout_seconds: float = field(default=10.0, metadata={"env": "SERVING_HEADER_TIMEOUT_SECONDS"})
    body_timeout_seconds: float = field(default=10.0, metadata={"env": "SERVING_BODY_TIMEOUT_SECONDS"})
    # retries of a failed start-up load (seconds between attempts; 0 = no background retry)
    load_retry_seconds: float = field(default=15.0, metadata={"env": "SERVING_LOAD_RETRY_SECONDS"})
    # how often a worker re-reads the shared 'served version' record even without a change signal
    sync_interval_seconds: float = field(default=0.0, metadata={"env": "SERVING_SYNC_INTERVAL_SECONDS"})
    # local copies of the model versions loaded from MLflow, served when MLflow cannot be reached
    # ("" = <state_dir>/models; serving/model_cache.py)
    model_copy_dir: str = field(default="", metadata={"env": "SERVING_MODEL_COPY_DIR"})
    # (no setting makes the app follow the registry alias by itself: only POST /model/reload moves
    # the served version, see serving/manager.py)

    @property
    def resolved_db_path(self) -> Path:
        if self.db_path:
            return Path(self.db_path)
        return Path(self.state_dir) / "serving.sqlite3"

    @property
    def resolved_store_url(self) -> str:
        return self.store_url or f"{SQLITE_PREFIX}{self.resolved_db_path}"

    @property
    def effective_min_samples(self) -> int:
        return self.drift_min_samples or self.drift_window_size

    @classmethod
    def env_names(cls) -> dict[str, str]:
        return {f.metadata["env"]: f.name for f in fields(cls)}

    @classmethod
    def from_env(
        cls, overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
    ) -> ServingConfig:
        """Build the config from the environment, then `overrides` (keys: env names or field names)."""
        environ = os.environ if environ is None else environ
        by_field = {f.name: f for f in fields(cls)}
        env_to_field = cls.env_names()
        raw: dict[str, Any] = {}
        for env_name, field_name in env_to_field.items():
            if env_name in environ:
                raw[field_name] = environ[env_name]
        for key, value in (overrides or {}).items():
            name = env_to_field.get(key, key)
            if name not in by_field:
                raise ConfigError(f"unknown setting {key!r}")
            raw[name] = value
        values: dict[str, Any] = {}
        for name, value in raw.items():
            f = by_field[name]
            env_name = f.metadata["env"]
            try:
                if f.type in ("int", int):
                    values[name] = int(value)
                elif f.type in ("float", float):
                    values[name] = float(value)
                else:
                    values[name] = str(value)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"{env_name}={value!r} is not a valid {f.type}") from exc
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        if not 0.0 < self.drift_threshold < 1.0:
            raise ConfigError(f"DRIFT_THRESHOLD must be in (0, 1), got {self.drift_threshold}")
        if self.drift_window_size < 2:
            raise ConfigError(f"DRIFT_WINDOW_SIZE must be >= 2, got {self.drift_window_size}")
        if self.drift_min_samples < 0 or self.drift_min_samples > self.drift_window_size:
            raise ConfigError("DRIFT_MIN_SAMPLES must be between 0 (= window size) and DRIFT_WINDOW_SIZE")
        try:
            normalize_correction(self.drift_correction)
        except ValueError:
            raise ConfigError(
                f"DRIFT_CORRECTION must be one of {', '.join(CORRECTIONS)}, got {self.drift_correction!r}"
            ) from None
        if self.predict_backend.lower() not in BACKENDS:
            raise ConfigError(f"SERVING_PREDICT_BACKEND must be one of {', '.join(BACKENDS)}")
        if self.max_batch < 1:
            raise ConfigError("SERVING_MAX_BATCH must be >= 1")
        if self.max_body_bytes < 64:
            raise ConfigError("SERVING_MAX_BODY_BYTES must be >= 64")
        if not (self.header_timeout_seconds > 0 and self.body_timeout_seconds > 0):
            raise ConfigError("SERVING_HEADER_TIMEOUT_SECONDS and SERVING_BODY_TIMEOUT_SECONDS must be > 0")
        try:
            check_store_url(self.resolved_store_url)
        except ValueError as exc:
            raise ConfigError(f"SERVING_STORE_URL: {exc}") from exc
        if not self.model_name:
            raise ConfigError("MODEL_NAME must not be empty")
        for name, token in (("SERVING_ADMIN_TOKEN", self.admin_token), ("SERVING_FEEDBACK_TOKEN", self.feedback_token)):
            if token != token.strip() or any(not 0x21 <= ord(ch) <= 0x7E for ch in token):
                raise ConfigError(f"{name} must be printable ASCII without spaces (it travels as a bearer token)")
        if self.feedback_token and self.feedback_token == self.admin_token:
            raise ConfigError(
                "SERVING_FEEDBACK_TOKEN must differ from SERVING_ADMIN_TOKEN: the labelling "
                "service's credential must not be the admin credential"
            )
