"""Before serving starts: a model it can load.

With MLflow down, the verified local copy of the version a previous run served is enough
(serving/model_cache.py); otherwise `make run` waits for MLflow. With MLflow up and no champion yet,
the retrain pipeline runs once to register a first one, in the background: serving and Airflow start
meanwhile (serving answers 503 "no model loaded yet" until then), and `make run` asks serving to
load the new champion as soon as it is registered (`Bootstrap.finish`).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from driftloop.contract import CHAMPION_ALIAS
from stack.config import REPO_ROOT, StackConfig, mlflow_client_env
from stack.health import probe
from stack.procs import start_process, stop_group
from stack.services import STACK_MARKER, serving_state_file
from stack.waiting import NotYet, poll

log = logging.getLogger(__name__)

# How long `run` waits for an unreachable MLflow before serving can start (STACK_MLFLOW_WAIT overrides).
MLFLOW_WAIT_SECONDS = 120.0


def has_champion(cfg: StackConfig, secrets: dict[str, str]) -> bool:
    url = cfg.mlflow_tracking_uri
    try:
        resp = requests.get(
            f"{url}/api/2.0/mlflow/registered-models/alias",
            params={"name": cfg.model_name, "alias": CHAMPION_ALIAS},
            timeout=30,
            auth=(secrets["MLFLOW_TRACKING_USERNAME"], secrets["MLFLOW_TRACKING_PASSWORD"]),
        )
    except requests.RequestException as exc:
        raise RuntimeError(
            f"MLflow at {url} did not answer ({type(exc).__name__}); start it with `make mlflow` or `make run`"
        ) from None
    if resp.status_code in (401, 403):
        raise RuntimeError(
            f"MLflow at {url} refused the stack's login (HTTP {resp.status_code}); "
            f"the login in {cfg.root / 'secrets.env'} no longer matches {cfg.root / 'mlflow'}: "
            "`make clean-stack` starts over"
        )
    return resp.status_code == 200


def served_version(cfg: StackConfig) -> str | None:
    """The model version serving recorded as served in its state file (a previous run), read without
    writing anything; None when there is no such record or the file cannot be read."""
    path = serving_state_file(cfg)
    if not path.is_file() or path.stat().st_size == 0:
        return None
    try:
        conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=5)
        try:
            row = conn.execute("SELECT version FROM served WHERE model_name = ?", (cfg.model_name,)).fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return None
    return str(row[0]) if row and row[0] is not None else None


def mlflow_wait_seconds() -> float:
    try:
        return float(os.environ.get("STACK_MLFLOW_WAIT", MLFLOW_WAIT_SECONDS))
    except ValueError:
        return MLFLOW_WAIT_SECONDS


def local_model(cfg: StackConfig) -> tuple[str | None, str]:
    """(version, its directory) when serving can start without MLflow: a previous run recorded a
    served version and a verified local copy of it exists (serving/model_cache.py); else (None, why)."""
    from serving.model_cache import CopyUnusable, ModelCopies

    version = served_version(cfg)
    if version is None:
        return None, "serving has never served a model here"
    try:
        copy = ModelCopies(serving_state_file(cfg).parent / "models").open(cfg.model_name, version)
    except CopyUnusable as exc:
        return None, f"the local copy of version {version}, which it served before, is unusable: {exc}"
    if copy is None:
        return None, f"version {version}, which it served before, has no local copy"
    return version, str(copy.path)


def wait_for_mlflow(cfg: StackConfig, timeout: float, interval: float = 2.0, why_needed: str = "") -> None:
    """Block until MLflow's /health answers; RuntimeError saying what to do after `timeout` seconds."""
    url = cfg.mlflow_tracking_uri
    ok, why = probe(f"{url}/health")
    if ok:
        return
    needed = f" and serving needs it ({why_needed})" if why_needed else ""
    log.info(
        "  MLflow at %s is not reachable (%s)%s; waiting up to %.0fs (start it with `make mlflow` or `make run`)",
        url,
        why,
        needed,
        timeout,
    )
    t0 = time.monotonic()

    def answers() -> None:
        ok, why = probe(f"{url}/health")
        if not ok:
            raise NotYet(why)

    try:
        poll(answers, timeout=timeout, interval=interval)
    except NotYet as exc:
        raise RuntimeError(
            f"MLflow at {url} is still not reachable after {timeout:.0f}s ({exc}); serving needs "
            "it for its model: start it with `make mlflow` (or `make run`) and run this again"
        ) from None
    log.info("  MLflow answers (%.0fs)", time.monotonic() - t0)


def ensure_model_source(cfg: StackConfig, secrets: dict[str, str]) -> Bootstrap | None:
    """Before serving starts: a model it can load. With MLflow down, the verified local copy of the
    version a previous run served is enough; otherwise wait for MLflow. With MLflow up and no champion
    yet, start the bootstrap retrain (returned: the caller finishes it once the other parts started).
    A state file serving would refuse (empty, damaged) stops the start here, in a second, whatever
    MLflow's state."""
    from serving.store.base import StateFileError
    from serving.store.sqlite import check_state_file

    try:
        check_state_file(serving_state_file(cfg))
    except StateFileError as exc:
        raise RuntimeError(str(exc)) from None
    ok, why = probe(f"{cfg.mlflow_tracking_uri}/health")
    if not ok:
        version, where = local_model(cfg)
        if version is not None:
            log.info(
                "  MLflow at %s is not reachable (%s): serving starts on version %s of %s, which it served "
                "before, from its local copy (%s)",
                cfg.mlflow_tracking_uri,
                why,
                version,
                cfg.model_name,
                where,
            )
            return None
        wait_for_mlflow(cfg, mlflow_wait_seconds(), why_needed=where)
    if has_champion(cfg, secrets):
        return None
    return start_bootstrap(cfg, secrets)


@dataclass
class Bootstrap:
    """The first retrain, running in its own process group while the other parts start."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    outcome_path: Path
    started: float

    def finish(self, cfg: StackConfig, secrets: dict[str, str], timeout: float = 900.0) -> str:
        """Wait for the pipeline, then have serving load the champion it registered; returns the version.
        RuntimeError naming the log when the pipeline failed or registered nothing."""
        from kfp_components.steps.deploy import reload_serving_app

        try:
            code = self.proc.wait(timeout=max(timeout - (time.monotonic() - self.started), 1.0))
        except subprocess.TimeoutExpired:
            self.stop()
            raise RuntimeError(f"bootstrap retrain still running after {timeout:.0f}s; see {self.log_path}") from None
        try:
            outcome = json.loads(self.outcome_path.read_text())
        except (OSError, ValueError):
            outcome = {}
        version = outcome.get("registered_version")
        if code != 0 or not version:
            why = outcome.get("error") or outcome.get("reason") or f"exit {code}"
            raise RuntimeError(f"bootstrap retrain failed ({why}); see {self.log_path}")
        log.info("  first champion: %s version %s registered in %.0fs", cfg.model_name, version, self.elapsed)
        reload_serving_app(cfg.serving_url, cfg.model_name, str(version), secrets["SERVING_ADMIN_TOKEN"], 120.0)
        return str(version)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def stop(self) -> None:
        if self.proc.poll() is None:
            stop_group(self.proc.pid)


def start_bootstrap(cfg: StackConfig, secrets: dict[str, str]) -> Bootstrap:
    """First run: train and register a champion so that serving has a model; not deployed by the
    pipeline (serving may not answer yet): `Bootstrap.finish` reloads serving."""
    out_path = cfg.logs / "bootstrap-retrain.log"
    outcome_path = cfg.root / "bootstrap-outcome.json"
    outcome_path.unlink(missing_ok=True)
    log.info(
        "  registry has no %s for %s: running the retrain pipeline once, in the background (log: %s)",
        CHAMPION_ALIAS,
        cfg.model_name,
        out_path,
    )
    cmd = [
        sys.executable,
        "-m",
        "kfp_components.run_local",
        "--pipeline-root",
        str(cfg.root / "kfp-local"),
        "--outcome-file",
        str(outcome_path),
        "--param",
        f"mlflow_tracking_uri={cfg.mlflow_tracking_uri}",
        "--param",
        f"model_name={cfg.model_name}",
        "--param",
        "deploy_target=none",
        "--param",
        "min_accuracy=0.0",
        "--param",
        "run_tag=bootstrap",
    ]
    env = {
        STACK_MARKER: str(cfg.root),
        **mlflow_client_env(secrets, cfg.mlflow_tracking_uri),
        "SERVING_ADMIN_TOKEN": secrets["SERVING_ADMIN_TOKEN"],
    }
    return Bootstrap(start_process(cmd, out_path, env=env, cwd=REPO_ROOT), out_path, outcome_path, time.monotonic())
