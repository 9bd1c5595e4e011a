"""After a retrain: find out what the pipeline decided and check that serving follows it.

The pipeline run tells its outcome as ``{"run_id", "decision", "reason", "registered_version"}``: the
local backend reads it from the runner's ``OUTCOME`` line (run outputs), otherwise it is looked up in
MLflow by the run's name (``kfp_components.outcome.find_outcome``; the pipeline tags its MLflow run
with ``retrain_run=<run name>``).

* ``rejected``: a successful DAG run; the reason is logged and returned (visible in the task's XCom);
* ``accepted``: the serving app's ``GET /model/info`` must report the new version (polled for a while,
  because the deploy step or the replicas may take a moment); otherwise the task fails.
"""
from __future__ import annotations

import logging
import time
from typing import Any

from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowNotFoundException

log = logging.getLogger("airflow_kfp_provider.champion")


def resolve_outcome(run: dict, mlflow_uri: str) -> dict:
    outcome = (run.get("outputs") or {}).get("outcome")
    if outcome:
        return dict(outcome)
    name = run.get("display_name") or ""
    try:
        from kfp_components.outcome import find_outcome
    except ImportError as exc:
        raise AirflowFailException(
            f"the run {name!r} reported no outcome and kfp_components.outcome is not importable ({exc}): "
            "install the project (`make install`)"
        ) from exc
    return dict(find_outcome(mlflow_uri, name) or {})


def _model_info(http_conn_id: str) -> dict:
    from airflow.providers.http.hooks.http import HttpHook

    response = HttpHook(method="GET", http_conn_id=http_conn_id).run(
        "/model/info", extra_options={"check_response": False, "timeout": 10}
    )
    if response.status_code != 200:
        raise AirflowException(f"GET /model/info answered {response.status_code}: {response.text[:300]}")
    return response.json()


def confirm_champion(
    run: dict,
    *,
    http_conn_id: str = "serving_default",
    model_name: str = "iris-model",
    deploy_target: str = "local",
    mlflow_uri: str = "",
    wait_seconds: float = 120.0,
    interval: float = 3.0,
) -> dict:
    """Return ``{"decision", "reason", "registered_version", "served_version", "run_name", ...}`` or raise."""
    if not run:
        raise AirflowFailException("no pipeline run to confirm (the submit task returned nothing)")
    name = run.get("display_name") or run.get("run_id")
    outcome = resolve_outcome(run, mlflow_uri)
    decision = outcome.get("decision")
    result = {
        "run_name": name,
        "kfp_run_id": run.get("run_id"),
        "mlflow_run_id": outcome.get("run_id"),
        "decision": decision,
        "reason": outcome.get("reason"),
        "registered_version": outcome.get("registered_version"),
        "served_version": None,
    }
    if decision == "rejected":
        log.info("Candidate of run %s was rejected: %s. The champion is unchanged.", name, outcome.get("reason"))
        return result
    if decision != "accepted":
        raise AirflowFailException(
            f"cannot tell what pipeline run {name!r} decided (outcome {outcome}): its MLflow run (tag "
            f"retrain_run={name}) has no validation_decision. Check the pipeline's log and mlflow_uri={mlflow_uri!r}"
        )
    version = str(outcome.get("registered_version") or "")
    if not version:
        raise AirflowFailException(f"run {name!r} accepted its candidate but registered no model version: {outcome}")
    if deploy_target == "none":
        log.info("Model %s version %s registered as champion; deploy_target=none, serving not checked.",
                 model_name, version)
        return result

    deadline = time.monotonic() + wait_seconds
    info: dict[str, Any] = {}
    last_error = ""
    while True:
        try:
            info = _model_info(http_conn_id)
            last_error = ""
        except AirflowNotFoundException:
            raise AirflowFailException(
                f"Airflow connection {http_conn_id!r} (the serving app) is not defined: set e.g. "
                f"AIRFLOW_CONN_{http_conn_id.upper()}='http://127.0.0.1:8000'"
            ) from None
        except Exception as exc:  # serving restarting: keep asking until the deadline
            last_error = f"{type(exc).__name__}: {exc}"
        else:
            if info.get("name") not in (None, model_name):
                log.warning("The serving app serves model %r, not %r: not checking its version.",
                            info.get("name"), model_name)
                return result
            if str(info.get("version")) == version:
                result["served_version"] = version
                log.info("Serving app now serves %s version %s (alias %s): new champion confirmed.",
                         model_name, version, info.get("alias"))
                return result
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    raise AirflowException(
        f"model {model_name} version {version} was accepted by run {name!r}, but after {wait_seconds:.0f}s the "
        f"serving app (connection {http_conn_id!r}) reports version {info.get('version')!r}"
        + (f" (last error: {last_error})" if last_error else "")
        + ". Check the deploy step's log and the app's POST /model/reload (admin token)."
    )
