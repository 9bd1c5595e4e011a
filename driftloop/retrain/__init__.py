"""The drift_retrain DAG's own pieces (dags/drift_retrain.py imports them from here): its settings and
Param defaults (`settings`), the drift check against the serving app (`drift`), the confirmation that
serving follows the pipeline's decision (`champion`) and the failure alerts (`alerts`).

They build on the reusable `airflow_kfp_provider` package and on the project's contract
(`driftloop.contract`). Nothing heavy is imported here: the DAG file stays fast to parse."""
