"""The MLflow tracking server of the embedded stack: SQLite backend store, local artifact directory,
bound to 127.0.0.1. Used by `make run` and by the test fixtures."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from stack.procs import start_process, wait_http_ok

# One uvicorn worker: on two cores several workers only slow start-up (about 40 s for 4 workers).
MLFLOW_WORKERS = "1"
# The server's background job runner serves MLflow's GenAI features only; it costs a process and CPU.
MLFLOW_SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def mlflow_command(state_dir: Path, host: str, port: int) -> list[str]:
    state_dir = Path(state_dir).resolve()
    return [
        str(Path(sys.executable).with_name("mlflow")),
        "server",
        "--backend-store-uri", f"sqlite:///{state_dir / 'mlflow.db'}",
        "--artifacts-destination", str(state_dir / "artifacts"),
        "--host", host,
        "--port", str(port),
        "--workers", MLFLOW_WORKERS,
    ]


def start_mlflow(state_dir: Path, port: int, host: str = "127.0.0.1", log_path: Path | None = None,
                 timeout: float = 180.0) -> tuple[subprocess.Popen, str]:
    """Start the server and wait until /health answers; returns the process and its URL."""
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    proc = start_process(mlflow_command(state_dir, host, port), log_path or state_dir / "mlflow.log", env=MLFLOW_SERVER_ENV)
    url = f"http://{host}:{port}"
    wait_http_ok(f"{url}/health", timeout=timeout, proc=proc)
    return proc, url
