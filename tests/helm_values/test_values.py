"""The Helm values wire what the provider package and the DAG read (helm itself cannot run here)."""
from pathlib import Path

import yaml

from airflow_kfp_provider.settings import KFP_CONN_ID, PARAM_ENV_PREFIX, SERVING_CONN_ID

VALUES = Path(__file__).resolve().parents[2] / "helm-values" / "airflow.yaml"


def test_airflow_values_parse_and_wire_the_control_plane():
    values = yaml.safe_load(VALUES.read_text())
    assert values["executor"] == "KubernetesExecutor"
    assert values["triggerer"]["enabled"] and values["dagProcessor"]["enabled"]
    env = {item["name"]: item["value"] for item in values["env"]}
    assert env[f"{PARAM_ENV_PREFIX}DEPLOY_TARGET"] == "kubernetes"
    text = VALUES.read_text()
    # connections are documented as a Secret, never committed as values
    for conn_id in (KFP_CONN_ID, SERVING_CONN_ID):
        assert f"AIRFLOW_CONN_{conn_id.upper()}" in text
        assert f"AIRFLOW_CONN_{conn_id.upper()}" not in env
    assert "secretRef" in values["extraEnvFrom"]
