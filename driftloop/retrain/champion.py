"""After a retrain: find out what the pipeline decided and check that serving follows it.

The pipeline run tells its outcome as ``{"mlflow_run_id", "decision", "reason", "registered_version"}``:
the local backend reads it from the outcome file the runner wrote (run outputs), otherwise it is
looked up in MLflow by the run's name (``kfp_components.outcome.find_outcome``; the pipeline tags its
MLflow run with ``retrain_run=<run name>``).

* ``rejected``: a successful DAG run; the reason is logged and returned (visible in the task's XCom);
* ``accepted``: the serving app's ``GET /model/info`` must report the new version (polled for a while,
  because the deploy step or the replicas may take a moment); otherwise the task fails.
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowNotFoundException
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_fixed

from driftloop.contract import DEFAULT_MODEL_NAME, SERVING_CONN_ID

log = logging.getLogger(__name__)


class _NotServedYet(Exception):
    """The serving app does not (yet) report the accepted version, or did not answer."""


def resolve_outcome(run: dict[str, Any], mlflow_tracking_uri: str) -> dict[str, Any]:
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
    return dict(find_outcome(mlflow_tracking_uri, name) or {})


def _model_info(http_conn_id: str) -> dict[str, Any]:
    from airflow.providers.http.hooks.http import HttpHook

    response = HttpHook(method="GET", http_conn_id=http_conn_id).run(
        "/model/info", extra_options={"check_response": False, "timeout": 10}
    )
    if response.status_code != 200:
        raise AirflowException(f"GET /model/info answered {response.status_code}: {response.text[:300]}")
    info: dict[str, Any] = response.json()
    return info


def confirm_champion(
    run: dict[str, Any],
    *,
    http_conn_id: str = SERVING_CONN_ID,
    model_name: str = DEFAULT_MODEL_NAME,
    deploy_target: str = "local",
    mlflow_tracking_uri: str = "",
    wait_seconds: float = 120.0,
    interval: float = 3.0,
) -> dict[str, Any]:
    """Return ``{"decision", "reason", "registered_version", "served_version", "run_name", "kfp_run_id",
    "mlflow_run_id"}`` or raise."""
    if not run:
        raise AirflowFailException("no pipeline run to confirm (the submit task returned nothing)")
    name = run.get("display_name") or run.get("run_id")
    outcome = resolve_outcome(run, mlflow_tracking_uri)
    decision = outcome.get("decision")
    result = {
        "run_name": name,
        "kfp_run_id": run.get("run_id"),
        "mlflow_run_id": outcome.get("mlflow_run_id"),
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
            f"retrain_run={name}) has no validation_decision. Check the pipeline's log and "
            f"mlflow_tracking_uri={mlflow_tracking_uri!r}"
        )
    version = str(outcome.get("registered_version") or "")
    if not version:
        raise AirflowFailException(f"run {name!r} accepted its candidate but registered no model version: {outcome}")
    if deploy_target == "none":
        log.info(
            "Model %s version %s registered as champion; deploy_target=none, serving not checked.", model_name, version
        )
        return result

    seen: dict[str, Any] = {"info": {}, "error": ""}

    def check_served() -> None:
        try:
            info = _model_info(http_conn_id)
        except AirflowNotFoundException:
            raise AirflowFailException(
                f"Airflow connection {http_conn_id!r} (the serving app) is not defined: set e.g. "
                f"AIRFLOW_CONN_{http_conn_id.upper()}='http://127.0.0.1:8000'"
            ) from None
        except Exception as exc:  # serving restarting: keep asking until the deadline
            seen["error"] = f"{type(exc).__name__}: {exc}"
            raise _NotServedYet() from exc
        seen.update(info=info, error="")
        if info.get("name") not in (None, model_name):
            log.warning(
                "The serving app serves model %r, not %r: not checking its version.", info.get("name"), model_name
            )
            return
        if str(info.get("version")) != version:
            raise _NotServedYet()
        result["served_version"] = version
        log.info(
            "Serving app now serves %s version %s (alias %s): new champion confirmed.",
            model_name,
            version,
            info.get("alias"),
        )

    try:
        for attempt in Retrying(
            retry=retry_if_exception_type(_NotServedYet),
            stop=stop_after_delay(wait_seconds),
            wait=wait_fixed(interval),
            reraise=True,
        ):
            with attempt:
                check_served()
    except _NotServedYet:
        last_error = seen["error"]
        raise AirflowException(
            f"model {model_name} version {version} was accepted by run {name!r}, but after {wait_seconds:.0f}s "
            f"the serving app (connection {http_conn_id!r}) reports version {seen['info'].get('version')!r}"
            + (f" (last error: {last_error})" if last_error else "")
            + ". Check the deploy step's log and the app's POST /model/reload (admin token)."
        ) from None
    return result
