"""What the embedded stack runs: one spec per long-running process, with its command, environment,
port and health check. Airflow runs as its four separate processes (api-server, scheduler,
dag-processor, triggerer) with the LocalExecutor and SQLite, everything bound to 127.0.0.1; MLflow
runs its basic-auth app and every client of it gets the stack's generated login."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from driftloop.contract import KFP_CONN_ID, SERVING_CONN_ID
from stack.config import REPO_ROOT, StackConfig, mlflow_client_env
from stack.mlflow_server import MLFLOW_SERVER_ENV, auth_server_env, mlflow_command

# Every process of the stack carries this variable, so `stop` can find stragglers that left their
# process group (a detached pipeline run, a re-parented worker) by their environment (psutil).
STACK_MARKER = "DRIFTLOOP_STACK_DIR"


# In start order; `stop` needs only the names (no secrets, no environment).
SERVICE_NAMES = (
    "mlflow",
    "serving",
    "airflow-api-server",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
)

# The Airflow processes without an HTTP endpoint, judged by the job heartbeat Airflow records for them
# (their names in the api-server's /api/v2/monitor/health).
AIRFLOW_COMPONENTS = {
    "airflow-scheduler": "scheduler",
    "airflow-dag-processor": "dag_processor",
    "airflow-triggerer": "triggerer",
}


@dataclass
class ServiceSpec:
    name: str
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    port: int | None = None
    health_url: str | None = None
    start_timeout: float = 180.0


def venv_bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def connection_variable(conn_id: str) -> str:
    """The environment variable Airflow reads connection `conn_id` from."""
    return f"AIRFLOW_CONN_{conn_id.upper()}"


def serving_state_file(cfg: StackConfig) -> Path:
    """The serving app's SQLite state (its default under SERVING_STATE_DIR, see serving/config.py)."""
    return cfg.root / "serving" / "serving.sqlite3"


LOCAL_POLL_SECONDS = 2.0  #: how often the deferred submit task looks at a local pipeline run


def serving_env(cfg: StackConfig, secrets: dict[str, str]) -> dict[str, str]:
    return {
        **mlflow_client_env(secrets, cfg.mlflow_tracking_uri),
        "MODEL_NAME": cfg.model_name,
        "SERVING_ADMIN_TOKEN": secrets["SERVING_ADMIN_TOKEN"],
        "SERVING_FEEDBACK_TOKEN": secrets["SERVING_FEEDBACK_TOKEN"],
        "SERVING_STATE_DIR": str(serving_state_file(cfg).parent),
        "SERVING_HOST": cfg.host,
        "SERVING_PORT": str(cfg.serving_port),
        "GUNICORN_BIND": f"{cfg.host}:{cfg.serving_port}",
        "GUNICORN_WORKERS": str(cfg.serving_workers),
        "SERVING_WORKERS": str(cfg.serving_workers),
        "PROMETHEUS_MULTIPROC_DIR": str(cfg.root / "serving" / "prometheus"),
    }


def airflow_env(cfg: StackConfig, secrets: dict[str, str]) -> dict[str, str]:
    home = cfg.root / "airflow"
    passwords = home / "simple_auth_manager_passwords.json"
    if not passwords.exists():
        home.mkdir(parents=True, exist_ok=True)
        fd = os.open(passwords, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump({secrets["AIRFLOW_USER"]: secrets["AIRFLOW_PASSWORD"]}, handle)
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__FERNET_KEY": secrets["AIRFLOW_FERNET_KEY"],
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{secrets['AIRFLOW_USER']}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{cfg.airflow_url}/execution/",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__API__HOST": cfg.host,
        "AIRFLOW__API__PORT": str(cfg.airflow_port),
        "AIRFLOW__API__BASE_URL": cfg.airflow_url,
        "AIRFLOW__API__SECRET_KEY": secrets["AIRFLOW_API_SECRET_KEY"],
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets["AIRFLOW_JWT_SECRET"],
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(cfg.logs / "airflow"),
        "AIRFLOW__SCHEDULER__STANDALONE_DAG_PROCESSOR": "True",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        # Connections of the drift_retrain DAG (see docs/airflow.md)
        connection_variable(SERVING_CONN_ID): json.dumps(
            {"conn_type": "http", "host": cfg.host, "port": cfg.serving_port, "schema": "http"}
        ),
        connection_variable(KFP_CONN_ID): json.dumps(
            {
                "conn_type": "kfp",
                "extra": {
                    "backend": "local",
                    "runs_dir": str(cfg.root / "kfp-runs"),
                    "pipeline_root": str(cfg.root / "kfp-local"),
                    # the project's runner: outputs.outcome and each failed step's own message in the run
                    "runner": [sys.executable, "-m", "kfp_components.run_local"],
                },
            }
        ),
        "DRIFT_RETRAIN_MLFLOW_TRACKING_URI": cfg.mlflow_tracking_uri,
        # A look at a local run reads its record file: every 2 s instead of the API server's 15 s puts
        # the DAG run's end (confirm_champion) within 2 s of the pipeline's.
        "DRIFT_RETRAIN_POLL_INTERVAL": str(LOCAL_POLL_SECONDS),
        "DRIFT_RETRAIN_SERVING_URL": cfg.serving_url,
        # the pipeline's runs (started by Airflow's workers) and confirm_champion use these
        **mlflow_client_env(secrets, cfg.mlflow_tracking_uri),
        "SERVING_ADMIN_TOKEN": secrets["SERVING_ADMIN_TOKEN"],
        "NO_PROXY": "*",
    }


def service_specs(cfg: StackConfig, secrets: dict[str, str]) -> list[ServiceSpec]:
    marker = {STACK_MARKER: str(cfg.root), "PYTHONUNBUFFERED": "1"}
    airflow = {**airflow_env(cfg, secrets), **marker}
    airflow_bin = venv_bin("airflow")
    return [
        ServiceSpec(
            "mlflow",
            mlflow_command(cfg.root / "mlflow", cfg.host, cfg.mlflow_port, auth=True),
            {**MLFLOW_SERVER_ENV, **auth_server_env(cfg.root / "mlflow", secrets), **marker},
            cfg.mlflow_port,
            f"{cfg.mlflow_tracking_uri}/health",
        ),
        ServiceSpec(
            "serving",
            [venv_bin("gunicorn"), "-c", str(REPO_ROOT / "serving" / "gunicorn.conf.py"), "serving.app:create_app()"],
            {**serving_env(cfg, secrets), **marker},
            cfg.serving_port,
            f"{cfg.serving_url}/health",
        ),
        ServiceSpec(
            "airflow-api-server",
            [airflow_bin, "api-server", "--host", cfg.host, "--port", str(cfg.airflow_port), "--workers", "1"],
            airflow,
            cfg.airflow_port,
            f"{cfg.airflow_url}/api/v2/monitor/health",
            240,
        ),
        # No log servers: they bind every interface (Airflow hard-codes the host) and are not needed
        # here, since the api-server reads task and trigger logs from the shared local log folder.
        ServiceSpec("airflow-scheduler", [airflow_bin, "scheduler", "--skip-serve-logs"], airflow),
        ServiceSpec("airflow-dag-processor", [airflow_bin, "dag-processor"], airflow),
        ServiceSpec("airflow-triggerer", [airflow_bin, "triggerer", "--skip-serve-logs"], airflow),
    ]
