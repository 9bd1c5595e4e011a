"""Airflow plugin (entry point ``airflow.plugins``): registers the retrain task's extra links.

The API server shows an operator's extra links from the serialized DAG; the link classes the provider
does not declare (``MlflowRunLink``, ``DriftReportLink``) must be known to Airflow through a plugin.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from driftloop.retrain.links import DriftReportLink, MlflowRunLink


class DriftloopRetrainPlugin(AirflowPlugin):
    name = "driftloop_retrain"
    operator_extra_links = [MlflowRunLink(), DriftReportLink()]
