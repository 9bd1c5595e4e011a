"""The MLflow tracking server of the embedded stack: SQLite backend store, local artifact directory,
bound to 127.0.0.1, and (in the stack) MLflow's basic-auth app, so that nobody without the stack's
generated login can register a model or move the `champion` alias. Used by `make run` and by the
test fixtures (which run it without auth unless asked)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from stack.procs import start_process, wait_http_ok

# One uvicorn worker: on two cores several workers only slow start-up (about 40 s for 4 workers).
MLFLOW_WORKERS = "1"
# The server's background job runner serves MLflow's GenAI features only; it costs a process and CPU.
MLFLOW_SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
# How long the auth app keeps a verified login (write_auth_config).
AUTH_CACHE_SECONDS = 300


def mlflow_command(state_dir: Path, host: str, port: int, auth: bool = False) -> list[str]:
    state_dir = Path(state_dir).resolve()
    return [
        str(Path(sys.executable).with_name("mlflow")),
        "server",
        "--backend-store-uri",
        f"sqlite:///{state_dir / 'mlflow.db'}",
        "--artifacts-destination",
        str(state_dir / "artifacts"),
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        MLFLOW_WORKERS,
        *(["--app-name", "basic-auth"] if auth else []),
    ]


def write_auth_config(state_dir: Path, admin_username: str) -> Path:
    """MLflow's basic-auth settings for this server: its user database beside the tracking database
    (the packaged default is a path relative to the working directory). The admin password is not in
    this file: it reaches the server as MLFLOW_AUTH_ADMIN_PASSWORD on first start only."""
    state_dir = Path(state_dir).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / "basic_auth.ini"
    path.write_text(
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = sqlite:///{state_dir / 'basic_auth.db'}\n"
        f"admin_username = {admin_username}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        "grant_default_workspace_access = false\n"
        # MLflow checks the password (PBKDF2, ~0.5 s on two cores) on every request unless
        # successful checks are cached: a retrain makes ~60 requests. One worker, and password
        # changes through the API drop the entry at once: nothing can serve a stale login.
        f"auth_cache_ttl_seconds = {AUTH_CACHE_SECONDS}\n"
    )
    return path


def auth_server_env(state_dir: Path, secrets: dict[str, str]) -> dict[str, str]:
    """Environment of an `mlflow server --app-name basic-auth` process."""
    return {
        "MLFLOW_AUTH_CONFIG_PATH": str(write_auth_config(state_dir, secrets["MLFLOW_TRACKING_USERNAME"])),
        "MLFLOW_AUTH_ADMIN_PASSWORD": secrets["MLFLOW_TRACKING_PASSWORD"],
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets["MLFLOW_FLASK_SERVER_SECRET_KEY"],
    }


def start_mlflow(
    state_dir: Path,
    port: int,
    host: str = "127.0.0.1",
    log_path: Path | None = None,
    timeout: float = 180.0,
    auth_secrets: dict[str, str] | None = None,
) -> tuple[subprocess.Popen[bytes], str]:
    """Start the server and wait until /health answers; returns the process and its URL. With
    `auth_secrets` (the stack's MLFLOW_TRACKING_USERNAME/PASSWORD and MLFLOW_FLASK_SERVER_SECRET_KEY)
    it runs the basic-auth app as the stack does."""
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    env = {**MLFLOW_SERVER_ENV, **(auth_server_env(state_dir, auth_secrets) if auth_secrets else {})}
    proc = start_process(
        mlflow_command(state_dir, host, port, auth=auth_secrets is not None),
        log_path or state_dir / "mlflow.log",
        env=env,
    )
    url = f"http://{host}:{port}"
    wait_http_ok(f"{url}/health", timeout=timeout, proc=proc)
    return proc, url
