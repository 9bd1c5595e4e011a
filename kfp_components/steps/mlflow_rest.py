"""The few MLflow REST API calls that validating, registering and reading a retrain's outcome make,
over `requests`.

`import mlflow` costs 2.4-4.5 s on two cores, whatever is used of it (it imports pandas, FastAPI,
the GenAI and tracing modules), and every pipeline step is a fresh process. These steps need a dozen
calls of MLflow's documented REST API 2.0 (https://mlflow.org/docs/latest/rest-api.html) and one
artifact download, so they speak it directly: `requests` imports in 0.1 s. Training still uses the
MLflow client: it logs an MLflow model, which is the library's job.

Credentials are read as the MLflow client reads them: MLFLOW_TRACKING_USERNAME and
MLFLOW_TRACKING_PASSWORD (basic auth) or MLFLOW_TRACKING_TOKEN (bearer). Artifacts are downloaded
through the tracking server's artifact proxy (`mlflow-artifacts:/` URIs: the embedded stack and the
Helm values serve artifacts); any other artifact store goes through the MLflow client.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests

from kfp_components.steps.errors import StepError

API = "/api/2.0/mlflow"
PROXIED_SCHEME = "mlflow-artifacts:"
NOT_FOUND_CODES = ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE")


class MlflowApiError(StepError):
    """An MLflow REST call failed; `error_code` is MLflow's (e.g. RESOURCE_DOES_NOT_EXIST) or the HTTP status."""

    def __init__(self, message: str, error_code: str = "", status: int = 0):
        super().__init__(message)
        self.error_code = error_code
        self.status = status


def tracking_auth(env: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """`requests` keyword arguments for the MLflow client's credential variables."""
    if env.get("MLFLOW_TRACKING_TOKEN"):
        return {"headers": {"Authorization": f"Bearer {env['MLFLOW_TRACKING_TOKEN']}"}}
    if env.get("MLFLOW_TRACKING_USERNAME") and env.get("MLFLOW_TRACKING_PASSWORD"):
        return {"auth": (env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"])}
    return {}


class MlflowRest:
    """One tracking server; every failure is an MlflowApiError that names the call and the server."""

    def __init__(self, tracking_uri: str, timeout: float = 30.0):
        self.base = tracking_uri.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        auth = tracking_auth()
        self.session.auth = auth.get("auth")
        self.session.headers.update(auth.get("headers", {}))

    def call(self, method: str, endpoint: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        url = f"{self.base}{API}/{endpoint}"
        try:
            if method == "GET":
                resp = self.session.get(url, params=payload, timeout=self.timeout)
            else:
                resp = self.session.request(method, url, json=payload or {}, timeout=self.timeout)
        except requests.RequestException as exc:
            raise MlflowApiError(f"MLflow at {self.base} did not answer {endpoint}: {exc}") from exc
        if resp.status_code in (401, 403):
            raise MlflowApiError(
                f"MLflow at {self.base} refused {endpoint} (HTTP {resp.status_code}): set "
                "MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN",
                str(resp.status_code),
                resp.status_code,
            )
        try:
            body: dict[str, Any] = resp.json() if resp.content else {}
        except ValueError:
            body = {"message": resp.text[:200]}
        if resp.status_code != 200:
            code = str(body.get("error_code", resp.status_code))
            raise MlflowApiError(
                f"MLflow {endpoint} failed (HTTP {resp.status_code}, {code}): {body.get('message', '')}",
                code,
                resp.status_code,
            )
        return body

    # -- runs ---------------------------------------------------------------------------------------
    def get_run(self, run_id: str) -> dict[str, Any]:
        run: dict[str, Any] = self.call("GET", "runs/get", {"run_id": run_id})["run"]
        return run

    def set_tag(self, run_id: str, key: str, value: str) -> None:
        self.call("POST", "runs/set-tag", {"run_id": run_id, "key": key, "value": value})

    def log_metrics(self, run_id: str, metrics: dict[str, float]) -> None:
        stamp = int(time.time() * 1000)
        batch = [{"key": k, "value": v, "timestamp": stamp, "step": 0} for k, v in metrics.items()]
        if batch:
            self.call("POST", "runs/log-batch", {"run_id": run_id, "metrics": batch})

    def search_runs(self, filter_string: str, max_results: int = 1) -> list[dict[str, Any]]:
        experiments = self.call("POST", "experiments/search", {"max_results": 1000}).get("experiments", [])
        if not experiments:
            return []
        payload = {
            "experiment_ids": [e["experiment_id"] for e in experiments],
            "filter": filter_string,
            "order_by": ["attributes.start_time DESC"],
            "max_results": max_results,
        }
        runs: list[dict[str, Any]] = self.call("POST", "runs/search", payload).get("runs", [])
        return runs

    def download_run_artifact(self, run: dict[str, Any], path: str, dst: Path) -> Path:
        """The run's artifact `path` written under `dst`; through the server's artifact proxy, else
        through the MLflow client (other artifact stores)."""
        root: str = run["info"]["artifact_uri"]
        if not root.startswith(PROXIED_SCHEME):
            from mlflow.artifacts import download_artifacts

            local = download_artifacts(
                artifact_uri=f"{root.rstrip('/')}/{path}", dst_path=str(dst), tracking_uri=self.base
            )
            return Path(local)
        relative = root[len(PROXIED_SCHEME) :].lstrip("/")
        url = f"{self.base}/api/2.0/mlflow-artifacts/artifacts/{quote(relative)}/{quote(path)}"
        try:
            resp = self.session.get(url, timeout=self.timeout)
        except requests.RequestException as exc:
            raise MlflowApiError(f"MLflow at {self.base} did not answer for artifact {path}: {exc}") from exc
        if resp.status_code != 200:
            raise MlflowApiError(
                f"artifact {path} of run {run['info']['run_id']}: HTTP {resp.status_code}",
                str(resp.status_code),
                resp.status_code,
            )
        target = Path(dst) / Path(path).name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(resp.content)
        return target

    # -- registry -----------------------------------------------------------------------------------
    def version_by_alias(self, name: str, alias: str) -> dict[str, Any] | None:
        """The model version behind `alias`, or None when the model or the alias does not exist."""
        try:
            version: dict[str, Any] = self.call("GET", "registered-models/alias", {"name": name, "alias": alias})[
                "model_version"
            ]
        except MlflowApiError as exc:
            if exc.error_code in NOT_FOUND_CODES or exc.status == 404:
                return None
            raise
        return version

    def search_versions(self, filter_string: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.call(
            "GET", "model-versions/search", {"filter": filter_string, "max_results": 1000}
        ).get("model_versions", [])
        return found

    def create_registered_model(self, name: str) -> None:
        """Create `name`, or leave it as it is when it exists."""
        try:
            self.call("POST", "registered-models/create", {"name": name})
        except MlflowApiError as exc:
            if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                raise

    def create_version(
        self, name: str, source: str, run_id: str, tags: dict[str, str], model_id: str | None, wait: float = 300.0
    ) -> dict[str, Any]:
        """A new version of `name`, once its status is READY (at once on MLflow's own server)."""
        payload: dict[str, Any] = {
            "name": name,
            "source": source,
            "run_id": run_id,
            "tags": [{"key": k, "value": v} for k, v in tags.items()],
        }
        if model_id:
            payload["model_id"] = model_id
        version: dict[str, Any] = self.call("POST", "model-versions/create", payload)["model_version"]
        deadline = time.monotonic() + wait
        while version.get("status", "READY") == "PENDING_REGISTRATION" and time.monotonic() < deadline:
            time.sleep(0.5)
            version = self.call("GET", "model-versions/get", {"name": name, "version": version["version"]})[
                "model_version"
            ]
        if version.get("status", "READY") != "READY":
            raise MlflowApiError(
                f"{name} version {version['version']} is {version.get('status')}: {version.get('status_message', '')}"
            )
        return version

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.call("POST", "registered-models/alias", {"name": name, "alias": alias, "version": version})


def run_tags(run: dict[str, Any]) -> dict[str, str]:
    return {t["key"]: t.get("value", "") for t in run.get("data", {}).get("tags", [])}


def run_metrics(run: dict[str, Any]) -> dict[str, float]:
    return {m["key"]: float(m["value"]) for m in run.get("data", {}).get("metrics", [])}
