"""make k8s renders the four parts, every object validates for Kubernetes 1.33 and 1.35, and the charts'
schemas reject wrong values with a message naming the key."""

from __future__ import annotations

import copy
import subprocess
import sys
import time
from collections import Counter

import pytest
import yaml

from k8s import paths
from k8s.objects import embedded_objects, load_all
from k8s.render import RenderError, Sources, ensure_kfp_tree, render_part
from k8s.validate import VERSIONS, validate_parts
from tests.k8s.helpers import write_values

pytestmark = pytest.mark.k8s

REPO = paths.REPO
VALUES = REPO / "helm-values"


def kinds(part) -> Counter:
    return Counter(d["kind"] for d in part.docs)


def names(part, kind) -> set[str]:
    return {d["metadata"]["name"] for d in part.docs if d["kind"] == kind}


# --- what is rendered --------------------------------------------------------------------------------


def test_four_files_are_written(parts, k8s_out):
    assert sorted(p.name for p in k8s_out.iterdir()) == ["airflow.yaml", "kfp.yaml", "mlflow.yaml", "serving.yaml"]
    for name, part in parts.items():
        assert part.path == k8s_out / f"{name}.yaml"
        assert load_all(part.path.read_text()) == part.docs


def test_airflow_objects(parts):
    airflow = parts["airflow"]
    assert len(airflow.docs) == 23
    assert kinds(airflow) == Counter(
        {
            "ServiceAccount": 7,
            "Service": 3,
            "Deployment": 4,
            "ConfigMap": 2,
            "Role": 2,
            "RoleBinding": 2,
            "StatefulSet": 1,
            "Job": 1,
            "Secret": 1,
        }
    )
    assert names(airflow, "Deployment") == {
        "airflow-api-server",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-statsd",
    }
    assert names(airflow, "StatefulSet") == {"airflow-triggerer"}
    # external metadata DB and keys from existing Secrets: no bundled PostgreSQL, no generated keys,
    # no create-user job (it would carry a literal password)
    assert names(airflow, "Job") == {"airflow-run-airflow-migrations"}
    assert names(airflow, "Secret") == {"airflow-broker-url"}
    assert not any("postgresql" in d["metadata"]["name"] or "redis" in d["metadata"]["name"] for d in airflow.docs)
    cfg = airflow.get("ConfigMap", "airflow-config")
    assert "executor = KubernetesExecutor" in cfg["data"]["airflow.cfg"]
    pods = [obj for d in airflow.docs for _, obj in embedded_objects(d)]
    assert len(pods) == 1 and pods[0]["spec"]["containers"][0]["name"] == "base"


def test_airflow_uses_existing_secrets(parts):
    airflow = parts["airflow"]
    scheduler = airflow.get("Deployment", "airflow-scheduler")
    env = {e["name"]: e for e in scheduler["spec"]["template"]["spec"]["containers"][0]["env"]}
    for var, key in (
        ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "connection"),
        ("AIRFLOW__CORE__FERNET_KEY", "fernet-key"),
        ("AIRFLOW__API__SECRET_KEY", "api-secret-key"),
        ("AIRFLOW__API_AUTH__JWT_SECRET", "jwt-secret"),
    ):
        assert env[var]["valueFrom"]["secretKeyRef"] == {"name": "driftloop-airflow", "key": key}
    assert env["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "driftloop-airflow-mlflow"


def test_mlflow_objects(parts):
    mlflow = parts["mlflow"]
    assert kinds(mlflow) == Counter(
        {"ServiceAccount": 1, "Secret": 2, "ConfigMap": 3, "PersistentVolumeClaim": 1, "Service": 1, "Deployment": 1}
    )
    svc = mlflow.get("Service", "mlflow")
    assert [p["port"] for p in svc["spec"]["ports"]] == [5000]
    dep = mlflow.get("Deployment", "mlflow")
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--serve-artifacts" in args and "--artifacts-destination=/mlflow/artifacts" in args
    assert "--backend-store-uri=postgresql://" in args and "--app-name=basic-auth" in args
    assert dep["spec"]["strategy"]["type"] == "Recreate"  # the artifact volume is ReadWriteOnce


def test_kfp_objects(parts):
    kfp = parts["kfp"]
    assert len(kfp.docs) == 72
    assert names(kfp, "Service") >= {"ml-pipeline", "seaweedfs", "mysql"}
    # the overlay's additions: the deployer Role/RoleBinding in mlops, no literal upstream credentials
    assert kfp.get("Role", "driftloop-serving-deployer", "mlops") is not None
    assert kfp.get("RoleBinding", "driftloop-serving-deployer", "mlops") is not None
    assert names(kfp, "Secret") == set()
    mysql = kfp.get("Deployment", "mysql")
    env = {e["name"]: e for e in mysql["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "MYSQL_ALLOW_EMPTY_PASSWORD" not in env
    assert env["MYSQL_ROOT_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "mysql-secret", "key": "password"}


def test_serving_objects(parts):
    serving = parts["serving"]
    assert kinds(serving).keys() >= {"Deployment", "Service", "ConfigMap", "ServiceAccount"}
    for kind in ("Deployment", "Service", "ConfigMap", "ServiceAccount"):
        assert "ml-api" in names(serving, kind)
    assert names(serving, "Secret") == set()  # tokens come from the existing Secret ml-api-secrets


# --- validation --------------------------------------------------------------------------------------


def test_every_object_validates_strictly(parts):
    errors, warnings, count = validate_parts(parts)
    assert errors == []
    assert warnings == []  # no custom resources with the system's values
    assert count == sum(len(p.docs) for p in parts.values()) + 1  # + the Airflow task pod template
    assert VERSIONS == ("1.33", "1.35")


def test_unknown_field_fails_naming_the_object(fresh):
    dep = fresh["serving"].get("Deployment", "ml-api")
    dep["spec"]["template"]["spec"]["containers"][0]["readynessProbe"] = {}
    errors, _, _ = validate_parts({"serving": fresh["serving"]})
    assert {e.version for e in errors} == set(VERSIONS)
    assert all("Deployment mlops/ml-api" in str(e) and "readynessProbe" in str(e) for e in errors)


def test_wrong_type_in_embedded_pod_template_fails(fresh):
    cm = fresh["airflow"].get("ConfigMap", "airflow-config")
    pod = yaml.safe_load(cm["data"]["pod_template_file.yaml"])
    pod["spec"]["containers"][0]["resources"]["requests"]["memory"] = ["512Mi"]
    cm["data"]["pod_template_file.yaml"] = yaml.safe_dump(pod)
    errors, _, _ = validate_parts({"airflow": fresh["airflow"]})
    assert errors and "pod_template_file.yaml" in str(errors[0]) and "memory" in str(errors[0])


def test_custom_resources_only_warn(parts, tmp_path):
    values = write_values(
        tmp_path / "serving.yaml",
        VALUES / "serving.yaml",
        lambda v: v.setdefault("serviceMonitor", {}).update(enabled=True),
    )
    serving = render_part("serving", Sources(overrides={"serving": values}), write=False)
    assert "ServiceMonitor" in kinds(serving)
    errors, warnings, _ = validate_parts({"serving": serving})
    assert errors == []
    assert len(warnings) == 1 and "ServiceMonitor" in str(warnings[0]) and "custom resource" in str(warnings[0])


# --- schemas: wrong values fail with the key named ----------------------------------------------------


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda v: v["scheduler"].update(replicas="two"), ["/scheduler/replicas", "want integer"]),
        (lambda v: v["scheduler"].update(replicaz=2), ["/scheduler", "'replicaz' not allowed"]),
        (lambda v: v.update(workerz={}), ["unknown top-level key", "'workerz'"]),
    ],
)
def test_airflow_values_schema(tmp_path, edit, expected):
    values = write_values(tmp_path / "airflow.yaml", VALUES / "airflow.yaml", edit)
    with pytest.raises(RenderError) as err:
        render_part("airflow", Sources(overrides={"airflow": values}), write=False)
    assert err.value.part == "airflow"
    for text in expected:
        assert text in str(err.value)


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda v: v.update(replicaCount="two"), ["replicaCount", "want integer"]),
        (lambda v: v["service"].update(prot=8000), ["/service", "'prot' not allowed"]),
        (lambda v: v.update(replicas=3), ["replicas"]),
    ],
)
def test_serving_values_schema(tmp_path, edit, expected):
    values = write_values(tmp_path / "serving.yaml", VALUES / "serving.yaml", edit)
    with pytest.raises(RenderError) as err:
        render_part("serving", Sources(overrides={"serving": values}), write=False)
    for text in expected:
        assert text in str(err.value)


def test_mlflow_values_schema(tmp_path):
    values = write_values(tmp_path / "mlflow.yaml", VALUES / "mlflow.yaml", lambda v: v["service"].update(port="5000"))
    with pytest.raises(RenderError, match=r"/service/port.*want integer"):
        render_part("mlflow", Sources(overrides={"mlflow": values}), write=False)


def test_missing_serving_chart_is_a_clear_error(tmp_path):
    with pytest.raises(RenderError, match=r"Chart.yaml is missing: the serving app's own Helm chart"):
        render_part("serving", Sources(serving_chart=tmp_path / "chart"), write=False)


# --- the KFP overlay and the upstream tree ------------------------------------------------------------


def test_overlay_references_the_extracted_tree_only():
    kust = yaml.safe_load((REPO / "k8s" / "kfp" / "kustomization.yaml").read_text())
    upstream = [r for r in kust["resources"] if r.startswith("../")]
    assert upstream == ["../../build/kfp-2.17.0/kfp/manifests/kustomize/env/platform-agnostic"]
    assert (REPO / "k8s" / "kfp" / upstream[0]).resolve().is_relative_to(paths.BUILD)
    tracked = subprocess.run(
        ["git", "ls-files", "--others", "--cached", "--exclude-standard", "k8s"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert not [f for f in tracked if "manifests/kustomize" in f or f.endswith(".tgz")]


def test_kfp_tree_is_extracted_once(parts):
    start = time.monotonic()
    tree = ensure_kfp_tree()
    assert time.monotonic() - start < 0.5
    assert (tree / "kfp" / "manifests" / "kustomize" / "env" / "platform-agnostic" / "kustomization.yaml").is_file()
    assert (tree / ".extracted-from").is_file()


def test_python_m_k8s_end_to_end():
    proc = subprocess.run([sys.executable, "-m", "k8s"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "OK" in proc.stdout and "0 errors" in proc.stdout
    for name in ("airflow", "mlflow", "kfp", "serving"):
        assert f"build/k8s/{name}.yaml" in proc.stdout
        assert (paths.OUT / f"{name}.yaml").is_file()


def test_python_m_k8s_fails_with_the_problem(tmp_path, monkeypatch):
    """A broken part makes the run exit 1 with the message, the others still render and validate."""
    from k8s import __main__ as cli
    from k8s import render

    broken = copy.copy(render.Sources())
    broken.serving_chart = tmp_path / "none"
    broken.out = tmp_path / "out"
    monkeypatch.setattr(cli, "Sources", lambda: broken)
    assert cli.main([]) == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["airflow.yaml", "kfp.yaml", "mlflow.yaml"]
