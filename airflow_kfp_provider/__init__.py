"""Airflow provider for Kubeflow Pipelines runs and drift checks (the drift_retrain control plane).

Importable from anywhere on sys.path (the triggerer must import the trigger; code under dags/ is not
importable there). Nothing heavy is imported here: DAG files that use the operators stay fast to parse.
"""
from __future__ import annotations

__version__ = "0.1.0"


def get_provider_info() -> dict:
    """Provider metadata (the ``apache_airflow_provider`` entry point), so that the UI knows the
    ``kfp`` connection type and its Test button."""
    return {
        "package-name": "driftloop",
        "name": "Kubeflow Pipelines (driftloop)",
        "description": "Submit and watch Kubeflow Pipelines runs (local kfp.local runner or a KFP API) "
                       "and read a serving app's drift status.",
        "versions": [__version__],
        "connection-types": [
            {"hook-class-name": "airflow_kfp_provider.hooks.kfp.KfpHook", "connection-type": "kfp"},
        ],
        "hooks": [{"integration-name": "Kubeflow Pipelines",
                   "python-modules": ["airflow_kfp_provider.hooks.kfp"]}],
        "triggers": [{"integration-name": "Kubeflow Pipelines",
                      "python-modules": ["airflow_kfp_provider.triggers.kfp"]}],
        "operators": [{"integration-name": "Kubeflow Pipelines",
                       "python-modules": ["airflow_kfp_provider.operators.kfp"]}],
        "sensors": [{"integration-name": "Kubeflow Pipelines",
                     "python-modules": ["airflow_kfp_provider.sensors.drift"]}],
    }
