"""What the project's parts share: the names and paths of the contract between the retrain pipeline,
the DAG, the serving app and the embedded stack (`contract`), the one parser for settings
(`settings`), and the logging set-up of every process (`logs`). No heavy imports here: each part
imports only the module it needs."""
