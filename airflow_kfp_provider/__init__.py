"""Airflow provider for Kubeflow Pipelines: submit, watch and cancel pipeline runs from Airflow.

Hook (:mod:`.hooks.kfp`, one connection type ``kfp`` with two backends behind one interface: a KFP API
server, or KFP's local runner on the Airflow machine), operator (:mod:`.operators.kfp`, deferrable),
trigger (:mod:`.triggers.kfp`), sensor (:mod:`.sensors.kfp`), extra link (:mod:`.links.kfp`) and run
states (:mod:`.states`). Importable from anywhere on sys.path (the triggerer must import the trigger).
Nothing heavy is imported here: DAG files that use the operators stay fast to parse.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.2.0"


def get_provider_info() -> dict[str, Any]:
    """Provider metadata (the ``apache_airflow_provider`` entry point): the ``kfp`` connection type and
    its Test button, the modules of each kind and the operator extra link."""
    return {
        "package-name": "driftloop",
        "name": "Kubeflow Pipelines",
        "description": "Submit and watch Kubeflow Pipelines runs on a KFP API server or on KFP's local runner.",
        "versions": [__version__],
        "connection-types": [
            {"hook-class-name": "airflow_kfp_provider.hooks.kfp.KfpHook", "connection-type": "kfp"},
        ],
        "hooks": [{"integration-name": "Kubeflow Pipelines", "python-modules": ["airflow_kfp_provider.hooks.kfp"]}],
        "triggers": [
            {"integration-name": "Kubeflow Pipelines", "python-modules": ["airflow_kfp_provider.triggers.kfp"]}
        ],
        "operators": [
            {"integration-name": "Kubeflow Pipelines", "python-modules": ["airflow_kfp_provider.operators.kfp"]}
        ],
        "sensors": [{"integration-name": "Kubeflow Pipelines", "python-modules": ["airflow_kfp_provider.sensors.kfp"]}],
        "extra-links": ["airflow_kfp_provider.links.kfp.KfpRunLink"],
    }
