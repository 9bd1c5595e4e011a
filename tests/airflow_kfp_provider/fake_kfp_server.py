"""A local HTTP server that answers like the Kubeflow Pipelines v2beta1 REST API, for the real kfp.Client.

Only what the hook uses is implemented, in the shapes of backend/api/v2beta1/swagger/*.swagger.json
(snake_case JSON field names as served by the grpc-gateway of the KFP API server):

    GET  /apis/v2beta1/healthz                      -> V2beta1GetHealthzResponse
    GET  /apis/v2beta1/experiments?filter=...       -> V2beta1ListExperimentsResponse
    POST /apis/v2beta1/experiments                  -> V2beta1Experiment
    GET  /apis/v2beta1/experiments/{id}             -> V2beta1Experiment
    POST /apis/v2beta1/pipelines/upload             -> V2beta1Pipeline (multipart upload)
    POST /apis/v2beta1/runs                         -> V2beta1Run (state PENDING)
    GET  /apis/v2beta1/runs?filter=&experiment_id=  -> V2beta1ListRunsResponse (EQUALS / IS_SUBSTRING on display_name)
    GET  /apis/v2beta1/runs/{id}                    -> V2beta1Run
    POST /apis/v2beta1/runs/{id}:terminate          -> {}  (CANCELING, then CANCELED)
    errors                                          -> HTTP status + googlerpcStatus {code, message, details}

How a run evolves: every GET of a run moves it one step along its script. The script is chosen from
the run's ``msg`` parameter: "fail" -> PENDING, RUNNING, FAILED (with an error); "slow" -> stays
RUNNING; "paused" -> PAUSED then SUCCEEDED; anything else -> PENDING, RUNNING, SUCCEEDED. Tests can
also set ``server.scripts[run_id]`` and inject failures with ``server.fail_next(n, status)``.
"""

from __future__ import annotations

import json
import threading
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

UNSET_TIME = "1970-01-01T00:00:00Z"
GRPC_CODES = {400: 3, 401: 16, 403: 7, 404: 5, 409: 6, 429: 8, 500: 13, 503: 14}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class FakeKfpServer:
    def __init__(self, token: str | None = None):
        self.token = token
        self.lock = threading.Lock()
        self.reset()
        handler = type("Handler", (_Handler,), {"server_state": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def reset(self) -> None:
        with getattr(self, "lock", threading.Lock()):
            self.experiments: dict[str, dict] = {}
            self.pipelines: dict[str, dict] = {}
            self.runs: dict[str, dict] = {}
            self.scripts: dict[str, list[str]] = {}
            self.requests: list[tuple[str, str]] = []
            self.created_runs: list[dict] = []
            self._fail: list[int] = []
            self.multi_user = False

    def fail_next(self, n: int, status: int = 503) -> None:
        with self.lock:
            self._fail.extend([status] * n)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- model -------------------------------------------------------------------------------
    def _script_for(self, run: dict) -> list[str]:
        params = (run.get("runtime_config") or {}).get("parameters") or {}
        msg = params.get("msg")
        if msg == "fail":
            return ["PENDING", "RUNNING", "FAILED"]
        if msg == "slow":
            return ["PENDING", "RUNNING"]
        if msg == "paused":
            return ["PAUSED", "SUCCEEDED"]
        return ["PENDING", "RUNNING", "SUCCEEDED"]

    def _set_state(self, run: dict, state: str) -> None:
        if run["state"] == state:
            return
        run["state"] = state
        run["state_history"].append({"update_time": _now(), "state": state})
        if state in ("SUCCEEDED", "FAILED", "CANCELED", "SKIPPED"):
            run["finished_at"] = _now()
        if state == "FAILED":
            run["error"] = {"code": 2, "message": "task train-model failed: exit code 1", "details": []}

    def advance(self, run_id: str) -> dict:
        run = self.runs[run_id]
        if run["state"] == "CANCELING":
            self._set_state(run, "CANCELED")
            return run
        script = self.scripts.get(run_id)
        if script:
            self._set_state(run, script.pop(0) if len(script) > 1 else script[0])
        return run

    def create_run(self, body: dict) -> dict:
        run_id = str(uuid.uuid4())
        exp_id = body.get("experiment_id") or self._default_experiment()["experiment_id"]
        run = {
            "experiment_id": exp_id,
            "run_id": run_id,
            "display_name": body.get("display_name", ""),
            "storage_state": "AVAILABLE",
            "description": body.get("description", ""),
            "pipeline_spec": body.get("pipeline_spec"),
            "pipeline_version_reference": body.get("pipeline_version_reference"),
            "runtime_config": body.get("runtime_config") or {},
            "service_account": body.get("service_account", ""),
            "created_at": _now(),
            "scheduled_at": _now(),
            "finished_at": UNSET_TIME,
            "state": "PENDING",
            "state_history": [{"update_time": _now(), "state": "PENDING"}],
        }
        self.runs[run_id] = run
        self.created_runs.append(run)
        self.scripts.setdefault(run_id, self._script_for(run))
        return run

    def _default_experiment(self) -> dict:
        for exp in self.experiments.values():
            if exp["display_name"] == "Default":
                return exp
        return self.create_experiment({"display_name": "Default"})

    def create_experiment(self, body: dict) -> dict:
        exp = {
            "experiment_id": str(uuid.uuid4()),
            "display_name": body.get("display_name", ""),
            "description": body.get("description", ""),
            "created_at": _now(),
            "namespace": body.get("namespace", ""),
            "storage_state": "AVAILABLE",
            "last_run_created_at": UNSET_TIME,
        }
        self.experiments[exp["experiment_id"]] = exp
        return exp


def _match(filter_json: str | None, item: dict) -> bool:
    if not filter_json:
        return True
    flt = json.loads(filter_json)
    for pred in flt.get("predicates", []):
        key = pred.get("key")
        value = pred.get("string_value", pred.get("stringValue"))
        op = pred.get("operation") or pred.get("op")
        actual = item.get(key)
        if op in ("EQUALS", 1) and actual != value:
            return False
        if op in ("NOT_EQUALS", 2) and actual == value:
            return False
        if op in ("IS_SUBSTRING", 9) and (value or "") not in (actual or ""):
            return False
    return True


class _Handler(BaseHTTPRequestHandler):
    server_state: FakeKfpServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str) -> None:
        self._send(status, {"error": message, "code": GRPC_CODES.get(status, 2), "message": message, "details": []})

    def _body(self) -> dict:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not raw:
            return {}
        if "multipart/form-data" in (self.headers.get("Content-Type") or ""):
            return {"_multipart": raw}
        return json.loads(raw)

    def _handle(self, method: str) -> None:
        st = self.server_state
        parsed = urlparse(self.path)
        path, query = parsed.path, {k: v[0] for k, v in parse_qs(parsed.query).items()}
        body = self._body() if method == "POST" else {}
        with st.lock:
            st.requests.append((method, path))
            if st._fail:
                status = st._fail.pop(0)
                return self._error(status, f"injected failure {status}")
            if st.token is not None and self.headers.get("Authorization") != f"Bearer {st.token}":
                return self._error(401, "Unauthenticated: missing or invalid bearer token")
            return self._route(method, path, query, body)

    def _route(self, method: str, path: str, query: dict, body: dict) -> None:
        st = self.server_state
        prefix = "/apis/v2beta1/"
        if not path.startswith(prefix):
            return self._error(404, f"Not Found: {path}")
        parts = path[len(prefix) :].split("/")
        res = parts[0]
        if res == "healthz" and method == "GET":
            return self._send(200, {"commit_sha": "fake", "tag_name": "2.5.0-fake", "multi_user": st.multi_user})
        if res == "experiments":
            if len(parts) == 1 and method == "GET":
                exps = [
                    e
                    for e in st.experiments.values()
                    if _match(query.get("filter"), e)
                    and (not query.get("namespace") or e["namespace"] == query["namespace"])
                ]
                return self._send(200, {"experiments": exps, "total_size": len(exps)} if exps else {})
            if len(parts) == 1 and method == "POST":
                if not body.get("display_name"):
                    return self._error(400, "Invalid input error: experiment name is empty")
                return self._send(200, st.create_experiment(body))
            if len(parts) == 2 and method == "GET":
                exp = st.experiments.get(parts[1])
                return self._send(200, exp) if exp else self._error(404, f"experiment {parts[1]} not found")
        if res == "pipelines" and parts[1:] == ["upload"] and method == "POST":
            name = query.get("name") or "pipeline"
            pipe = {"pipeline_id": str(uuid.uuid4()), "display_name": name, "created_at": _now()}
            st.pipelines[pipe["pipeline_id"]] = pipe
            return self._send(200, pipe)
        if res == "runs":
            if len(parts) == 1 and method == "POST":
                if not body.get("display_name"):
                    return self._error(400, "Invalid input error: run name is empty")
                if not body.get("pipeline_spec") and not body.get("pipeline_version_reference"):
                    return self._error(400, "Invalid input error: a pipeline spec or version is required")
                return self._send(200, st.create_run(body))
            if len(parts) == 1 and method == "GET":
                runs = [
                    r
                    for r in st.runs.values()
                    if _match(query.get("filter"), r)
                    and (not query.get("experiment_id") or r["experiment_id"] == query["experiment_id"])
                ]
                reverse = query.get("sort_by", "").endswith("desc")
                runs.sort(key=lambda r: r["created_at"], reverse=reverse)
                size = int(query.get("page_size") or 20)
                page = runs[:size]
                out = {"runs": page, "total_size": len(runs)} if page else {}
                if len(runs) > size:
                    out["next_page_token"] = "page-2"
                return self._send(200, out)
            run_id, _, action = parts[1].partition(":") if len(parts) == 2 else ("", "", "")
            run = st.runs.get(run_id)
            if run is None:
                return self._error(404, f"Run {run_id} not found")
            if method == "GET" and not action:
                return self._send(200, st.advance(run_id))
            if method == "POST" and action == "terminate":
                if run["state"] not in ("SUCCEEDED", "FAILED", "CANCELED"):
                    st._set_state(run, "CANCELING")
                return self._send(200, {})
        return self._error(404, f"Not Found: {method} {path}")

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")
