"""Names and paths that several parts must agree on, in one place.

The retrain pipeline writes a model version with these artifacts and tags, the serving app reads
them, the DAG and the embedded stack refer to the same DAG, pipeline and connection names. A change
here is a change of the contract: the serving app must still read what older pipeline runs wrote.
"""

from __future__ import annotations

#: The registered model the pipeline trains and the serving app serves (setting MODEL_NAME).
DEFAULT_MODEL_NAME = "iris-model"
#: The registry alias of the served model: the deploy step moves it, the serving app follows it.
CHAMPION_ALIAS = "champion"

# -- artifacts of a model version's MLflow run (written by train, read by validate and serving) ------
MODEL_ARTIFACT = "model"  #: the MLflow model (skops-serialised scikit-learn estimator)
REFERENCE_ARTIFACT = "drift/reference.csv"  #: the drift reference: the training split's feature columns
ONNX_ARTIFACT = "onnx/model.onnx"  #: the ONNX copy serving predicts with when its parity was checked
MODEL_URI_TAG = "model_uri"  #: run tag: the logged model's URI
ONNX_PARITY_TAG = "onnx_parity"  #: run tag "true" when the ONNX copy predicts as the estimator does
#: Types skops may load from a model artifact besides scikit-learn's own estimators.
SKOPS_TRUSTED_TYPES = ["sklearn.tree._tree.Tree"]

# -- orchestration ---------------------------------------------------------------------------------
DAG_ID = "drift_retrain"
PIPELINE_NAME = "ml-retrain-pipeline"
KFP_CONN_ID = "kfp_default"  #: Airflow connection of the KFP backend (API server or local runner)
SERVING_CONN_ID = "serving_default"  #: Airflow connection of the serving app (base URL + admin token)

# -- environment variable names shared by the parts --------------------------------------------------
#: MLflow's own variable: every part (and the mlflow client) reads the tracking server's address here.
MLFLOW_TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
