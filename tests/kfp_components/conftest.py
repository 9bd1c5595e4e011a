"""Fixtures for pipeline tests: a runner for the compiled pipeline against the session's MLflow server."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def run_pipeline(mlflow_server, tmp_path):
    """Run the committed compiled YAML once on the local runner; returns (exit code, OUTCOME dict, output)."""
    def _run(**params):
        params.setdefault("mlflow_uri", mlflow_server)
        params.setdefault("deploy_target", "none")
        argv = [sys.executable, "-m", "kfp_components.run_local", "--pipeline-root", str(tmp_path / "kfp")]
        for name, value in params.items():
            argv += ["--param", f"{name}={value}"]
        proc = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=600)
        outcome_lines = [l for l in proc.stdout.splitlines() if l.startswith("OUTCOME ")]
        outcome = json.loads(outcome_lines[-1][len("OUTCOME "):]) if outcome_lines else None
        return proc.returncode, outcome, proc.stdout + proc.stderr
    return _run


@pytest.fixture
def feedback_export():
    """The serving app's feedback export as load_data fetches it; `.serve(rows, labels)` returns its URL."""
    from tests.kfp_components.feedback_data import FeedbackExport

    export = FeedbackExport()
    yield export
    export.close()


@pytest.fixture
def mlflow_client(mlflow_server):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
