"""DriftStatusSensor: ask the serving app whether its inputs drifted (``GET /drift/status``).

The serving app is reached through an Airflow HTTP connection (default ``serving_default``,
e.g. ``AIRFLOW_CONN_SERVING_DEFAULT='http://127.0.0.1:8000'``).

* drift detected  -> success; the drift report is the task's XCom return value;
* no drift (or the window is still collecting samples) -> with ``skip_when_no_drift`` (default) the
  task is **skipped**, and with it everything downstream that needs it: the DAG run ends green with
  nothing submitted. Without it, the sensor keeps poking until drift shows up or ``timeout``;
* serving unreachable -> a few pokes are retried (a restarting app), then the task fails saying which
  URL and how to fix it; an answer that is not a drift report fails at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue
from airflow.sdk.exceptions import AirflowFailException, AirflowNotFoundException, AirflowSkipException

from driftloop.contract import SERVING_CONN_ID

if TYPE_CHECKING:
    from airflow.sdk import Context


def summarize_drift(status: dict[str, Any]) -> str:
    """One line for the log: which features drifted, with their p-values."""
    features = status.get("features") or {}
    drifted = [
        f"{name} (p={info.get('p_value')}, ks={info.get('ks_stat')})"
        for name, info in features.items()
        if isinstance(info, dict) and info.get("drift")
    ]
    extra = []
    for key in ("samples", "threshold", "correction", "combined_p_value", "model_version"):
        if status.get(key) is not None:
            extra.append(f"{key}={status[key]}")
    return f"drifted features: {', '.join(drifted) or 'none'}; " + ", ".join(extra)


class DriftStatusSensor(BaseSensorOperator):
    """Read the serving app's drift report; skip downstream when there is no drift.

    :param http_conn_id: HTTP connection of the serving app.
    :param endpoint: the drift status path.
    :param skip_when_no_drift: skip (the default) instead of waiting when there is no drift.
    :param max_unreachable: consecutive connection failures tolerated (one per poke) before failing.
    :param request_timeout: seconds for one HTTP request.
    """

    template_fields: Sequence[str] = ("http_conn_id", "endpoint")
    ui_color = "#f7e3b8"

    def __init__(
        self,
        *,
        http_conn_id: str = SERVING_CONN_ID,
        endpoint: str = "/drift/status",
        skip_when_no_drift: bool = True,
        max_unreachable: int = 3,
        request_timeout: float = 10.0,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("mode", "poke")
        kwargs.setdefault("poke_interval", 10.0)
        kwargs.setdefault("timeout", 600.0)
        super().__init__(**kwargs)
        self.http_conn_id = http_conn_id
        self.endpoint = endpoint
        self.skip_when_no_drift = skip_when_no_drift
        self.max_unreachable = max_unreachable
        self.request_timeout = request_timeout
        self._unreachable = 0

    def _fix_hint(self) -> str:
        return (
            f"start the serving app (`make run`) or point connection {self.http_conn_id!r} at it, e.g. "
            f"AIRFLOW_CONN_{self.http_conn_id.upper()}='http://127.0.0.1:8000'"
        )

    def poke(self, context: Context) -> bool | PokeReturnValue:
        import requests
        from airflow.providers.http.hooks.http import HttpHook

        hook = HttpHook(method="GET", http_conn_id=self.http_conn_id)
        try:
            response = hook.run(
                self.endpoint,
                headers={"Accept": "application/json"},
                extra_options={"check_response": False, "timeout": self.request_timeout},
            )
        except AirflowNotFoundException:
            raise AirflowFailException(
                f"Airflow connection {self.http_conn_id!r} (the serving app) is not defined: {self._fix_hint()}"
            ) from None
        except (requests.ConnectionError, requests.Timeout) as exc:
            self._unreachable += 1
            url = f"{hook.base_url}{self.endpoint}"
            if self._unreachable >= self.max_unreachable:
                raise AirflowFailException(
                    f"Serving app unreachable at {url} ({self._unreachable} tries; last error: "
                    f"{type(exc).__name__}: {exc}). Nothing was submitted. Fix: {self._fix_hint()}"
                ) from None
            self.log.warning(
                "Serving app unreachable at %s (%d/%d): %s", url, self._unreachable, self.max_unreachable, exc
            )
            return False
        self._unreachable = 0
        url = response.url
        if response.status_code != 200:
            raise AirflowFailException(
                f"GET {url} answered {response.status_code}: {response.text[:500]}. Nothing was submitted. "
                f"Is the serving app healthy and is {self.http_conn_id!r} pointing at it?"
            )
        try:
            status = response.json()
        except ValueError:
            status = None
        if not isinstance(status, dict) or not isinstance(status.get("drift_detected"), bool):
            raise AirflowFailException(
                f"GET {url} did not return a drift report (a JSON object with a boolean drift_detected): "
                f"{response.text[:300]!r}. Is {self.http_conn_id!r} pointing at the serving app?"
            )
        if status["drift_detected"]:
            self.log.info("Drift detected: %s", summarize_drift(status))
            return PokeReturnValue(is_done=True, xcom_value=status)
        reason = status.get("reason") or "no feature drifted"
        self.log.info("No drift (%s; samples=%s).", reason, status.get("samples"))
        if self.skip_when_no_drift:
            raise AirflowSkipException(f"No drift: {reason}. Nothing to retrain; downstream tasks are skipped.")
        return False
