"""A small stand-in for the Kubernetes API server's apps/v1 Deployment endpoints, for the deploy step's
`kubernetes` target driven through the real `kubernetes` client and a kubeconfig file.

It answers `GET` and `PATCH /apis/apps/v1/namespaces/{ns}/deployments/{name}` with Deployment objects
shaped as the API returns them (the serving chart's Deployment `mlops/ml-api`, container `serving`,
with the fields the API server defaults and a status), and errors as `Status` objects with the API's
messages. A PATCH must come as `application/strategic-merge-patch+json` (what kubectl and the client
send for a dict body); it merges maps, bumps `metadata.generation` when the spec changes (as the API
server does) and starts a simulated rollout that later GETs advance, like the Deployment controller:

- `rolls`: observed -> one new pod (surge) -> all replicas updated and available, revision + 1;
- `stuck`: the new pod never becomes available (rollout never completes);
- `deadline`: as `stuck`, then Progressing=False reason ProgressDeadlineExceeded.

Also a stand-in for the serving app's `POST /model/reload` + `GET /model/info`.
"""

from __future__ import annotations

import copy
import http.server
import json
import re
import threading
import time
from pathlib import Path

import yaml

SA_TOKEN = "pipeline-runner-sa-token"
SA_USER = "system:serviceaccount:kubeflow:pipeline-runner"
SMP = "application/strategic-merge-patch+json"
PATH = re.compile(r"^/apis/apps/v1/namespaces/(?P<ns>[^/]+)/deployments/(?P<name>[^/]+)$")
T0 = "2026-01-12T09:30:00Z"


def container(name: str, release: str = "ml-api") -> dict:
    probe = {"periodSeconds": 10, "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3}
    return {
        "name": name,
        "image": "driftloop/serving:0.1.0",
        "ports": [{"name": "http", "containerPort": 8000, "protocol": "TCP"}],
        "envFrom": [{"configMapRef": {"name": release}}, {"secretRef": {"name": "ml-api-secrets"}}],
        "resources": {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}},
        "readinessProbe": {"httpGet": {"path": "/health", "port": "http", "scheme": "HTTP"}, **probe},
        "livenessProbe": {"httpGet": {"path": "/health/live", "port": "http", "scheme": "HTTP"}, **probe},
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
        "imagePullPolicy": "IfNotPresent",
    }


def condition(kind: str, status: str, reason: str, message: str, when: str = T0) -> dict:
    return {
        "type": kind,
        "status": status,
        "lastUpdateTime": when,
        "lastTransitionTime": when,
        "reason": reason,
        "message": message,
    }


def deployment_object(
    name: str = "ml-api", namespace: str = "mlops", containers=("serving",), replicas: int = 2
) -> dict:
    """A Deployment as `GET /apis/apps/v1/namespaces/mlops/deployments/ml-api` returns it after a
    settled rollout of the serving chart."""
    selector = {"app.kubernetes.io/name": "driftloop-serving", "app.kubernetes.io/instance": name}
    return {
        "kind": "Deployment",
        "apiVersion": "apps/v1",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": "6f1c1f0e-8a43-4a0c-9a55-4d2b8f0b7c11",
            "resourceVersion": "41237",
            "generation": 1,
            "creationTimestamp": T0,
            "labels": {**selector, "app.kubernetes.io/managed-by": "Helm", "helm.sh/chart": "driftloop-serving-0.1.0"},
            "annotations": {
                "deployment.kubernetes.io/revision": "1",
                "meta.helm.sh/release-name": name,
                "meta.helm.sh/release-namespace": namespace,
            },
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": selector},
                "spec": {
                    "containers": [container(c, name) for c in containers],
                    "restartPolicy": "Always",
                    "terminationGracePeriodSeconds": 30,
                    "dnsPolicy": "ClusterFirst",
                    "serviceAccountName": name,
                    "serviceAccount": name,
                    "securityContext": {},
                    "schedulerName": "default-scheduler",
                },
            },
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}},
            "revisionHistoryLimit": 10,
            "progressDeadlineSeconds": 600,
        },
        "status": {
            "observedGeneration": 1,
            "replicas": replicas,
            "updatedReplicas": replicas,
            "readyReplicas": replicas,
            "availableReplicas": replicas,
            "conditions": [
                condition("Available", "True", "MinimumReplicasAvailable", "Deployment has minimum availability."),
                condition(
                    "Progressing",
                    "True",
                    "NewReplicaSetAvailable",
                    f'ReplicaSet "{name}-7d9c8b6f5d" has successfully progressed.',
                ),
            ],
        },
    }


def status_object(code: int, reason: str, message: str, name: str) -> dict:
    """An API error body (`kind: Status`)."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": {"name": name, "group": "apps", "kind": "deployments"},
        "code": code,
    }


def strategic_merge(target: dict, patch: dict) -> None:
    """The map part of a strategic merge patch (all the deploy step sends): maps merge, null deletes."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            strategic_merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


class FakeKubeAPI:
    """The Deployment endpoints on a free local port; `requests` records (method, path, content type,
    body) of each call, `events` is shared with FakeServing to show the order of calls."""

    def __init__(
        self,
        deployments: list[dict] | None = None,
        rollout: str = "rolls",
        forbid: set[str] = frozenset(),
        events: list | None = None,
        on_patch=None,
    ):
        self.deployments = {
            (d["metadata"]["namespace"], d["metadata"]["name"]): d
            for d in (deployments if deployments is not None else [deployment_object()])
        }
        self.rollout, self.forbid, self.on_patch = rollout, set(forbid), on_patch
        self.requests: list[tuple] = []
        self.events = events if events is not None else []
        self.patched_at: dict = {}
        self._steps: dict = {}
        self._lock = threading.Lock()
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                api._handle(self, "get")

            def do_PATCH(self):  # noqa: N802
                api._handle(self, "patch")

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def kubeconfig(self, path: Path, token: str = SA_TOKEN) -> Path:
        """A kubeconfig for this server: a bearer-token user like a ServiceAccount's."""
        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "preferences": {},
                    "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
                    "users": [{"name": "pipeline-runner", "user": {"token": token}}],
                    "contexts": [
                        {
                            "name": "fake",
                            "context": {"cluster": "fake", "user": "pipeline-runner", "namespace": "kubeflow"},
                        }
                    ],
                    "current-context": "fake",
                }
            )
        )
        return path

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    # -- the API ---------------------------------------------------------------------------------
    def _send(self, handler, code: int, body: dict):
        data = json.dumps(body).encode()
        handler.send_response(code)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _handle(self, handler, verb: str):
        path = handler.path.split("?", 1)[0]
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        content_type = handler.headers.get("Content-Type", "")
        with self._lock:
            self.requests.append((verb.upper(), path, content_type, json.loads(raw) if raw else None))
            self.events.append(("k8s", verb.upper()))
        if handler.headers.get("Authorization") != f"Bearer {SA_TOKEN}":
            return self._send(
                handler,
                401,
                {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Failure",
                    "message": "Unauthorized",
                    "reason": "Unauthorized",
                    "code": 401,
                },
            )
        match = PATH.match(path)
        if not match:
            return self._send(
                handler, 404, status_object(404, "NotFound", "the server could not find the requested resource", "")
            )
        ns, name = match["ns"], match["name"]
        if verb in self.forbid:
            return self._send(
                handler,
                403,
                status_object(
                    403,
                    "Forbidden",
                    f'deployments.apps "{name}" is forbidden: User "{SA_USER}" cannot {verb} resource '
                    f'"deployments" in API group "apps" in the namespace "{ns}"',
                    name,
                ),
            )
        with self._lock:
            dep = self.deployments.get((ns, name))
            if dep is None:
                return self._send(
                    handler, 404, status_object(404, "NotFound", f'deployments.apps "{name}" not found', name)
                )
            if verb == "patch":
                if content_type != SMP:
                    return self._send(
                        handler,
                        415,
                        status_object(
                            415,
                            "UnsupportedMediaType",
                            f"the body of the request was in an unknown format - accepted media "
                            f"types include: application/json-patch+json, application/merge-patch+json, {SMP}",
                            name,
                        ),
                    )
                before = copy.deepcopy(dep["spec"])
                strategic_merge(dep, json.loads(raw))
                if dep["spec"] != before:
                    dep["metadata"]["generation"] += 1
                    self._steps[(ns, name)] = 0
                dep["metadata"]["resourceVersion"] = str(int(dep["metadata"]["resourceVersion"]) + 1)
                self.patched_at[(ns, name)] = time.monotonic()
                if self.on_patch:
                    self.on_patch(copy.deepcopy(dep))
            else:
                self._advance(ns, name, dep)
            body = copy.deepcopy(dep)
        self._send(handler, 200, body)

    def _advance(self, ns: str, name: str, dep: dict):
        """The Deployment controller's work, one step a GET after a patch."""
        if (ns, name) not in self._steps:
            return
        step = self._steps[(ns, name)] = self._steps[(ns, name)] + 1
        want, status = dep["spec"]["replicas"], dep["status"]
        if step == 1:
            return  # the controller has not seen the new generation yet
        status["observedGeneration"] = dep["metadata"]["generation"]
        if step == 2 or self.rollout in ("stuck", "deadline"):
            status.update(replicas=want + 1, updatedReplicas=1, readyReplicas=want, availableReplicas=want)
            status["conditions"][1] = condition(
                "Progressing", "True", "ReplicaSetUpdated", f'ReplicaSet "{name}-5f7b9c4d8e" is progressing.'
            )
            if self.rollout == "deadline" and step >= 3:
                status["conditions"][1] = condition(
                    "Progressing",
                    "False",
                    "ProgressDeadlineExceeded",
                    f'ReplicaSet "{name}-5f7b9c4d8e" has timed out progressing.',
                )
            return
        status.update(replicas=want, updatedReplicas=want, readyReplicas=want, availableReplicas=want)
        status["conditions"][1] = condition(
            "Progressing",
            "True",
            "NewReplicaSetAvailable",
            f'ReplicaSet "{name}-5f7b9c4d8e" has successfully progressed.',
        )
        annotations = dep["metadata"]["annotations"]
        revision = "deployment.kubernetes.io/revision"
        annotations[revision] = str(int(annotations[revision]) + 1)
        del self._steps[(ns, name)]


class FakeServing:
    """The serving app's `POST /model/reload` (admin bearer token) and `GET /model/info`: after a
    reload it serves `champion` (the registry alias target)."""

    def __init__(self, model_name: str, served: str, champion: str, token: str, events: list | None = None):
        self.model_name, self.served, self.champion, self.token = model_name, served, champion, token
        self.events = events if events is not None else []
        serving = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _json(self, code, body):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):  # noqa: N802
                serving.events.append(("serving", "POST " + self.path))
                if self.path != "/model/reload":
                    return self._json(404, {"error": "not found"})
                if self.headers.get("Authorization") != f"Bearer {serving.token}":
                    return self._json(401, {"error": "admin token required"})
                serving.served = serving.champion
                self._json(200, {"status": "reloaded", "version": serving.served})

            def do_GET(self):  # noqa: N802
                if self.path != "/model/info":
                    return self._json(404, {"error": "not found"})
                self._json(200, {"name": serving.model_name, "version": serving.served, "alias": "champion"})

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
