"""Each wiring check passes on the real render and fails, naming what is wrong, on a broken copy."""

from __future__ import annotations

import base64
import json

import pytest

from k8s import paths
from k8s.wiring import ALLOWED_SECRETS, EXEMPT, connection_url, default_values_files, run_checks, scan_values
from tests.k8s.helpers import check, rerender, write_values

pytestmark = pytest.mark.k8s

VALUES = paths.REPO / "helm-values"
CHECKS = ("urls", "deploy", "images", "rbac", "secrets", "containers")


def set_env(values: dict, name: str, value: str) -> None:
    for item in values["env"]:
        if item["name"] == name:
            item["value"] = value
            return
    raise KeyError(name)


def broken_airflow(parts, tmp_path, edit):
    return rerender(parts, "airflow", write_values(tmp_path / "airflow.yaml", VALUES / "airflow.yaml", edit))


def problems_of(parts, name, values_files=None) -> str:
    result = check(parts, name, values_files)
    assert not result.ok, f"check {name} passed on a broken copy"
    return "\n".join(result.problems)


# --- the real render ----------------------------------------------------------------------------------


def test_all_checks_pass_on_the_real_render(parts):
    results = run_checks(parts)
    assert [r.name for r in results] == list(CHECKS)
    for r in results:
        assert r.ok, f"{r.name}: {r.problems}"
        assert r.verified


def test_urls_verified(parts):
    verified = "\n".join(check(parts, "urls").verified)
    assert (
        "AIRFLOW_CONN_KFP_DEFAULT=http://ml-pipeline.kubeflow.svc.cluster.local:8888 -> "
        "Service kubeflow/ml-pipeline:8888"
    ) in verified
    assert (
        "AIRFLOW_CONN_SERVING_DEFAULT=http://ml-api.mlops.svc.cluster.local:8000 -> Service mlops/ml-api:8000"
    ) in verified
    for var in ("MLFLOW_TRACKING_URI", "DRIFT_RETRAIN_MLFLOW_TRACKING_URI"):
        assert f"airflow {var}=http://mlflow.mlops.svc.cluster.local:5000 -> Service mlops/mlflow:5000" in verified
    assert "serving Deployment mlops/ml-api MLFLOW_TRACKING_URI" in verified
    assert "MLflow allows Host mlflow.mlops.svc.cluster.local:5000" in verified


def test_exemptions_and_allowed_secrets_are_explained():
    assert all(len(reason) > 40 for reason in {**EXEMPT, **ALLOWED_SECRETS}.values())
    assert set(ALLOWED_SECRETS) == {("airflow", "airflow-broker-url"), ("mlflow", "mlflow-flask-server-secret-key")}


# --- urls --------------------------------------------------------------------------------------------


def test_wrong_serving_service_name(parts, tmp_path):
    broken = broken_airflow(
        parts,
        tmp_path,
        lambda v: set_env(
            v,
            "AIRFLOW_CONN_SERVING_DEFAULT",
            '{"conn_type": "http", "host": "http://ml-apii.mlops.svc.cluster.local:8000"}',
        ),
    )
    msg = problems_of(broken, "urls")
    assert "AIRFLOW_CONN_SERVING_DEFAULT" in msg and "no Service 'ml-apii' in namespace 'mlops'" in msg
    assert "ml-api" in msg  # the Services that are there


def test_wrong_kfp_port_and_local_backend(parts, tmp_path):
    conn = {"conn_type": "kfp", "host": "http://ml-pipeline.kubeflow:8080", "extra": {"backend": "local"}}
    broken = broken_airflow(parts, tmp_path, lambda v: set_env(v, "AIRFLOW_CONN_KFP_DEFAULT", json.dumps(conn)))
    msg = problems_of(broken, "urls")
    assert "AIRFLOW_CONN_KFP_DEFAULT" in msg
    assert "Service kubeflow/ml-pipeline has no port 8080 (ports: 8888, 8887)" in msg
    assert "extra.backend='local'" in msg


def test_mlflow_url_of_the_wrong_part_and_not_namespaced(parts, tmp_path):
    def edit(v):
        set_env(v, "MLFLOW_TRACKING_URI", "http://ml-api.mlops.svc.cluster.local:8000")
        set_env(v, "DRIFT_RETRAIN_MLFLOW_TRACKING_URI", "http://mlflow:5000")

    msg = problems_of(broken_airflow(parts, tmp_path, edit), "urls")
    assert "MLFLOW_TRACKING_URI" in msg and "is in serving.yaml, expected a Service of mlflow.yaml" in msg
    assert "DRIFT_RETRAIN_MLFLOW_TRACKING_URI" in msg and "host 'mlflow'" in msg and "name.namespace" in msg


def test_variable_missing_in_a_dag_container(fresh):
    dep = fresh["airflow"].get("Deployment", "airflow-dag-processor")
    container = next(c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == "dag-processor")
    container["env"] = [e for e in container["env"] if e["name"] != "DRIFT_RETRAIN_SERVING_URL"]
    msg = problems_of(fresh, "urls")
    assert (
        "DRIFT_RETRAIN_SERVING_URL is not set in container dag-processor of Deployment airflow/airflow-dag-processor"
    ) in msg


def test_mlflow_rejects_the_host_header(parts, tmp_path):
    values = write_values(tmp_path / "mlflow.yaml", VALUES / "mlflow.yaml", lambda v: v.pop("serverAllowedHosts"))
    msg = problems_of(rerender(parts, "mlflow", values), "urls")
    assert "MLflow rejects the Host header 'mlflow.mlops.svc.cluster.local:5000'" in msg
    assert "serverAllowedHosts" in msg


def test_serving_mlflow_url_broken(parts, tmp_path):
    values = write_values(
        tmp_path / "serving.yaml",
        VALUES / "serving.yaml",
        lambda v: v["config"].update(MLFLOW_TRACKING_URI="http://mlflow.mlops.svc.cluster.local"),
    )
    msg = problems_of(rerender(parts, "serving", values), "urls")
    assert "serving Deployment mlops/ml-api MLFLOW_TRACKING_URI" in msg and "has no port 80" in msg


def test_service_selecting_no_pods(fresh):
    fresh["serving"].get("Service", "ml-api")["spec"]["selector"] = {"app": "nobody"}
    msg = problems_of(fresh, "urls")
    assert "Service mlops/ml-api: its selector {'app': 'nobody'} matches no pods" in msg


def test_service_target_port_missing(fresh):
    svc = fresh["mlflow"].get("Service", "mlflow")
    svc["spec"]["ports"][0]["targetPort"] = "http-typo"
    msg = problems_of(fresh, "urls")
    assert "Service mlops/mlflow: targetPort 'http-typo' is not a container port" in msg


# --- deploy ------------------------------------------------------------------------------------------


def test_deploy_names_a_missing_deployment(parts, tmp_path):
    def edit(v):
        set_env(v, "DRIFT_RETRAIN_K8S_DEPLOYMENT", "ml-api-v2")
        set_env(v, "DRIFT_RETRAIN_DEPLOY_TARGET", "local")

    msg = problems_of(broken_airflow(parts, tmp_path, edit), "deploy")
    assert (
        "DRIFT_RETRAIN_K8S_DEPLOYMENT=ml-api-v2: no such Deployment in serving.yaml (Deployments: mlops/ml-api)"
    ) in msg
    assert "DRIFT_RETRAIN_DEPLOY_TARGET='local'" in msg


def test_deploy_wrong_namespace(parts, tmp_path):
    broken = broken_airflow(parts, tmp_path, lambda v: set_env(v, "DRIFT_RETRAIN_K8S_NAMESPACE", "serving"))
    assert "DRIFT_RETRAIN_K8S_NAMESPACE=serving" in problems_of(broken, "deploy")


def test_deploy_container_renamed(fresh):
    dep = fresh["serving"].get("Deployment", "ml-api")
    dep["spec"]["template"]["spec"]["containers"][0]["name"] = "app"
    assert "Deployment mlops/ml-api has no container 'serving' (containers: app)" in problems_of(fresh, "deploy")


# --- images ------------------------------------------------------------------------------------------


def test_stock_airflow_image_in_task_pods(parts, tmp_path):
    broken = broken_airflow(parts, tmp_path, lambda v: v["images"].pop("pod_template"))
    msg = problems_of(broken, "images")
    assert "Pod template airflow-config/pod_template_file.yaml [base]" in msg and "apache/airflow:" in msg
    assert "k8s/airflow/Dockerfile" in msg


# --- rbac --------------------------------------------------------------------------------------------


def test_role_without_patch(fresh):
    role = fresh["kfp"].get("Role", "driftloop-serving-deployer", "mlops")
    role["rules"][0]["verbs"] = ["get", "list", "watch"]
    msg = problems_of(fresh, "rbac")
    assert "ServiceAccount kubeflow/pipeline-runner may not 'patch' Deployment mlops/ml-api" in msg
    assert "get" not in msg.split("may not ")[1].split(" ")[0]


def test_role_for_another_deployment(fresh):
    fresh["kfp"].get("Role", "driftloop-serving-deployer", "mlops")["rules"][0]["resourceNames"] = ["other"]
    msg = problems_of(fresh, "rbac")
    assert "may not 'get'" in msg and "may not 'patch'" in msg


def test_binding_for_another_service_account(fresh):
    rb = fresh["kfp"].get("RoleBinding", "driftloop-serving-deployer", "mlops")
    rb["subjects"][0]["namespace"] = "default"
    msg = problems_of(fresh, "rbac")
    assert "bound: nothing" in msg


def test_pipeline_service_account_missing(fresh):
    fresh["kfp"].docs = [
        d
        for d in fresh["kfp"].docs
        if not (d["kind"] == "ServiceAccount" and d["metadata"]["name"] == "pipeline-runner")
    ]
    assert "ServiceAccount kubeflow/pipeline-runner" in problems_of(fresh, "rbac")


# --- secrets -----------------------------------------------------------------------------------------


def test_literal_password_in_values(parts, tmp_path):
    bad = write_values(
        tmp_path / "mlflow.yaml", VALUES / "mlflow.yaml", lambda v: v["auth"].update(adminPassword="hunter2")
    )
    files = [f for f in default_values_files() if f.name != "mlflow.yaml"] + [bad]
    msg = problems_of(parts, "secrets", files)
    assert "mlflow.yaml: auth.adminPassword holds a literal value" in msg


def test_token_in_env_and_url_in_connection(parts, tmp_path):
    def edit(v):
        v["env"].append({"name": "SERVING_ADMIN_TOKEN", "value": "s3cret"})
        set_env(
            v,
            "AIRFLOW_CONN_KFP_DEFAULT",
            json.dumps({"conn_type": "kfp", "host": "http://ml-pipeline.kubeflow:8888", "password": "tok"}),
        )

    bad = write_values(tmp_path / "airflow.yaml", VALUES / "airflow.yaml", edit)
    files = [f for f in default_values_files() if f.name != "airflow.yaml"] + [bad]
    msg = problems_of(parts, "secrets", files)
    assert "sets SERVING_ADMIN_TOKEN to a literal value" in msg
    assert "(json).password holds a literal value" in msg


def test_rendered_secret_with_data(fresh):
    fresh["serving"].docs.append(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "ml-api-secrets"},
            "data": {"SERVING_ADMIN_TOKEN": base64.b64encode(b"x").decode()},
        }
    )
    msg = problems_of(fresh, "secrets")
    assert "serving: Secret mlops/ml-api-secrets is rendered with literal data (keys SERVING_ADMIN_TOKEN)" in msg


def test_allowed_upstream_secret_only_while_unused(fresh):
    dep = fresh["airflow"].get("Deployment", "airflow-scheduler")
    dep["spec"]["template"]["spec"]["containers"][0]["env"].append(
        {
            "name": "AIRFLOW__CELERY__BROKER_URL",
            "valueFrom": {"secretKeyRef": {"name": "airflow-broker-url", "key": "connection"}},
        }
    )
    assert "Secret airflow-broker-url is allowed only while nothing uses it" in problems_of(fresh, "secrets")


def test_literal_password_in_rendered_command_line(parts, tmp_path):
    broken = broken_airflow(parts, tmp_path, lambda v: v["createUserJob"].update(enabled=True))
    assert "passes a literal password on its command line (-p ...)" in problems_of(broken, "secrets")


@pytest.mark.parametrize(
    "data, flagged",
    [
        ({"auth": {"existingAdminSecret": {"name": "mlflow-admin", "passwordKey": "password"}}}, False),
        (
            {"fernetKeySecretName": "x", "secret": [{"envName": "A_PASSWORD", "secretName": "s", "secretKey": "k"}]},
            False,
        ),
        ({"backendStore": {"postgres": {"password": ""}}}, False),
        ({"fernetKey": "abc"}, True),
        ({"config": {"SERVING_STORE_URL": "postgresql://u:p@db:5432/serving"}}, True),
        ({"extraEnvVars": {"MLFLOW_TRACKING_PASSWORD": "x"}}, True),
        ({"extraEnv": "- name: AWS_SECRET_ACCESS_KEY\n  value: abc\n"}, True),
    ],
)
def test_scan_values(data, flagged):
    assert bool(scan_values(data, "v.yaml")) is flagged


# --- containers --------------------------------------------------------------------------------------


def test_serving_container_without_readiness_probe(fresh):
    fresh["serving"].get("Deployment", "ml-api")["spec"]["template"]["spec"]["containers"][0].pop("readinessProbe")
    problems = problems_of(fresh, "containers")
    assert "serving: Deployment mlops/ml-api container serving has no readinessProbe" in problems


def test_container_running_as_root(fresh):
    spec = fresh["serving"].get("Deployment", "ml-api")["spec"]["template"]["spec"]
    spec["containers"][0].setdefault("securityContext", {})["runAsUser"] = 0
    assert "container serving may run as root" in problems_of(fresh, "containers")


def test_airflow_task_pods_without_resources(parts, tmp_path):
    broken = broken_airflow(parts, tmp_path, lambda v: v["workers"]["kubernetes"].pop("resources"))
    msg = problems_of(broken, "containers")
    assert "airflow: Pod template airflow-config/pod_template_file.yaml container base has no resources" in msg


def test_mlflow_without_resources_and_non_root(parts, tmp_path):
    def edit(v):
        v.pop("resources")
        v["securityContext"].pop("runAsNonRoot")
        v["securityContext"]["runAsUser"] = 0

    msg = problems_of(
        rerender(parts, "mlflow", write_values(tmp_path / "m.yaml", VALUES / "mlflow.yaml", edit)), "containers"
    )
    assert "mlflow: Deployment mlops/mlflow container mlflow has no resources" in msg
    assert "container mlflow may run as root" in msg


def test_connection_url_forms():
    assert connection_url("X", '{"host": "ml-api.mlops", "port": 8000}')[0] == "http://ml-api.mlops:8000"
    assert connection_url("X", "http://ml-api.mlops:8000")[0] == "http://ml-api.mlops:8000"
    assert connection_url("X", "{not json")[1].startswith("X is not valid JSON")


def test_password_in_a_rendered_connection(fresh):
    dep = fresh["airflow"].get("Deployment", "airflow-scheduler")
    container = dep["spec"]["template"]["spec"]["containers"][0]
    conn = {"conn_type": "kfp", "host": "http://ml-pipeline.kubeflow:8888", "password": "t"}
    container["env"].append({"name": "AIRFLOW_CONN_KFP_DEFAULT", "value": json.dumps(conn)})
    assert "env AIRFLOW_CONN_KFP_DEFAULT(json).password holds a literal value" in problems_of(fresh, "secrets")
