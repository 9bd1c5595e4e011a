"""Where the embedded stack keeps its state and which ports it uses.

Everything lives under `.stack/` (or $STACK_DIR): databases, artifacts, logs, pid files, generated
secrets. Ports come from the environment (MLFLOW_PORT, SERVING_PORT, AIRFLOW_PORT) with fixed
defaults, so that URLs stay stable between runs.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from driftloop.contract import DEFAULT_MODEL_NAME, MLFLOW_TRACKING_URI_ENV

REPO_ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"


@dataclass
class StackConfig:
    root: Path
    mlflow_port: int = 5000
    serving_port: int = 8000
    airflow_port: int = 8080
    serving_workers: int = 2
    model_name: str = DEFAULT_MODEL_NAME
    host: str = HOST

    @classmethod
    def from_env(cls, root: Path | None = None) -> StackConfig:
        env = os.environ
        return cls(
            root=Path(root or env.get("STACK_DIR") or REPO_ROOT / ".stack").resolve(),
            mlflow_port=int(env.get("MLFLOW_PORT", 5000)),
            serving_port=int(env.get("SERVING_PORT", 8000)),
            airflow_port=int(env.get("AIRFLOW_PORT", 8080)),
            serving_workers=int(env.get("SERVING_WORKERS", 2)),
            model_name=env.get("MODEL_NAME") or DEFAULT_MODEL_NAME,
        )

    @property
    def mlflow_tracking_uri(self) -> str:
        return f"http://{self.host}:{self.mlflow_port}"

    @property
    def serving_url(self) -> str:
        return f"http://{self.host}:{self.serving_port}"

    @property
    def airflow_url(self) -> str:
        return f"http://{self.host}:{self.airflow_port}"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def pids(self) -> Path:
        return self.root / "pids"

    @property
    def endpoints_file(self) -> Path:
        return self.root / "endpoints.env"


def write_secret_file(path: Path, lines: dict[str, str]) -> None:
    """KEY=value lines, created with mode 0600 before anything is written into it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.writelines(f"{key}={value}\n" for key, value in lines.items())
    os.chmod(path, 0o600)


def read_env_file(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    values = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            values[key.strip()] = value.strip()
    return values


def load_or_create_secrets(cfg: StackConfig) -> dict[str, str]:
    """Generated once per stack directory and kept at 0600: the serving admin and feedback tokens,
    the MLflow basic-auth login and Flask secret, the Airflow admin password and the Airflow
    JWT/API/Fernet secrets. Keys added by a newer version are generated into an existing file."""
    path = cfg.root / "secrets.env"
    values = read_env_file(path)
    wanted = {
        "SERVING_ADMIN_TOKEN": lambda: secrets.token_urlsafe(32),
        "SERVING_FEEDBACK_TOKEN": lambda: secrets.token_urlsafe(32),
        # MLflow's own variable names: the MLflow client reads them as they are.
        "MLFLOW_TRACKING_USERNAME": lambda: "admin",
        "MLFLOW_TRACKING_PASSWORD": lambda: secrets.token_urlsafe(24),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": lambda: secrets.token_urlsafe(32),
        "AIRFLOW_USER": lambda: "admin",
        "AIRFLOW_PASSWORD": lambda: secrets.token_urlsafe(18),
        "AIRFLOW_JWT_SECRET": lambda: secrets.token_urlsafe(32),
        "AIRFLOW_API_SECRET_KEY": lambda: secrets.token_urlsafe(32),
        "AIRFLOW_FERNET_KEY": _fernet_key,
    }
    changed = False
    for key, make in wanted.items():
        if not values.get(key):
            values[key] = make()
            changed = True
    if changed or not path.exists():
        write_secret_file(path, values)
    return values


def _fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


def mlflow_client_env(secrets: dict[str, str], tracking_uri: str) -> dict[str, str]:
    """What a process needs to talk to the stack's MLflow server with the MLflow client as it is."""
    return {
        MLFLOW_TRACKING_URI_ENV: tracking_uri,
        "MLFLOW_REGISTRY_URI": tracking_uri,
        "MLFLOW_TRACKING_USERNAME": secrets["MLFLOW_TRACKING_USERNAME"],
        "MLFLOW_TRACKING_PASSWORD": secrets["MLFLOW_TRACKING_PASSWORD"],
    }
