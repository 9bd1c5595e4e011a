"""One embedded stack (`python -m stack run`) shared by the tests that need the whole thing running:
the lifecycle/e2e test, the browser tests and the security checks. Starting it costs ~2.5 minutes on
this machine, so it is started once per test session, on free ports in a temporary directory, and
stopped at the end (the lifecycle test also stops it and checks that nothing is left)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from stack.config import StackConfig, read_env_file
from stack.procs import free_port
from stack.stop import stack_stragglers

REPO = Path(__file__).resolve().parents[1]


def stack_env(root: Path) -> dict:
    # The stack must not depend on what the test process carries (mlflow.set_tracking_uri and
    # set_registry_uri write MLFLOW_* variables into the environment of whoever calls them).
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AIRFLOW", "MLFLOW", "SERVING_", "DRIFT_", "GUNICORN_", "PROMETHEUS_", "KFP_"))
    }
    env.update(
        STACK_DIR=str(root),
        MLFLOW_PORT=str(free_port()),
        SERVING_PORT=str(free_port()),
        AIRFLOW_PORT=str(free_port()),
        # the drift watcher looks every 5 s instead of every minute: the event path of `make e2e` and
        # the watcher's restart test wait for its looks (the default is measured by `make e2e` by hand)
        DRIFT_RETRAIN_DRIFT_POLL_INTERVAL="5",
    )
    return env


def stack_cmd(env: dict, *args: str, timeout: float = 1200) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "stack", *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=timeout
    )


def stack_processes(root: Path) -> list[int]:
    """The processes that carry the stack's marker variable (what `make stop` looks for)."""
    return stack_stragglers(StackConfig(root=root))


@dataclass
class RunningStack:
    root: Path
    env: dict
    run_output: str

    @property
    def endpoints(self) -> dict[str, str]:
        return read_env_file(self.root / "endpoints.env")

    @property
    def secrets(self) -> dict[str, str]:
        return read_env_file(self.root / "secrets.env")

    def cmd(self, *args: str, timeout: float = 1200) -> subprocess.CompletedProcess:
        return stack_cmd(self.env, *args, timeout=timeout)
