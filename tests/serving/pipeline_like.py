"""Log and register a model the way the retrain pipeline does (docs/contracts.md, 'What the training
step logs to MLflow'). A stand-in until kfp_components' training/registration steps can be called
directly; the serving tests only rely on the contract, so replacing this helper with the real step
functions must not change a test.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass

import numpy as np
import pandas as pd

IRIS_FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def iris_frame() -> tuple[pd.DataFrame, pd.Series]:
    from sklearn.datasets import load_iris

    data = load_iris()
    return pd.DataFrame(data.data, columns=IRIS_FEATURES), pd.Series(data.target, name="target")


@dataclass
class Registered:
    name: str
    version: str
    run_id: str
    onnx: bool


def log_like_pipeline(
    tracking_uri: str,
    model_name: str,
    X: pd.DataFrame,
    y: pd.Series,
    *,
    n_estimators: int = 10,
    random_state: int = 42,
    with_onnx: bool = True,
    experiment: str = "retrain",
    run_tag: str = "test",
    set_champion: bool = True,
    skip_reference: bool = False,
) -> Registered:
    import mlflow
    import sklearn
    from mlflow.models import infer_signature
    from mlflow.tracking import MlflowClient
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import train_test_split

    mlflow.set_tracking_uri(tracking_uri)
    # register_model asks the registry URI, which MLFLOW_TRACKING_URI in the environment (the session
    # server) would otherwise decide, whatever set_tracking_uri said
    mlflow.set_registry_uri(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    mlflow.set_experiment(experiment)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.2, random_state=random_state)
    model = RandomForestClassifier(n_estimators=n_estimators, random_state=random_state).fit(X_train, y_train)
    with mlflow.start_run(run_name=run_tag) as run:
        run_id = run.info.run_id
        mlflow.log_metric("accuracy", float((model.predict(X_test) == y_test).mean()))
        signature = infer_signature(X_train, model.predict(X_train))
        # explicit pip requirements: inferring them costs ~40 s on this machine (the pipeline does the same)
        logged = mlflow.sklearn.log_model(
            model,
            name="model",
            signature=signature,
            input_example=X_train.head(3),
            skops_trusted_types=["sklearn.tree._tree.Tree"],
            pip_requirements=[f"scikit-learn=={sklearn.__version__}"],
        )
        with tempfile.TemporaryDirectory() as tmp:
            if not skip_reference:
                ref = os.path.join(tmp, "reference.csv")
                X_train.to_csv(ref, index=False)
                mlflow.log_artifact(ref, "drift")
            parity = False
            if with_onnx:
                import onnxruntime as ort
                from skl2onnx import to_onnx

                onx = to_onnx(model, X_train.to_numpy(dtype=np.float32)[:1], options={"zipmap": False})
                sess = ort.InferenceSession(onx.SerializeToString(), providers=["CPUExecutionProvider"])
                onnx_pred = sess.run(None, {sess.get_inputs()[0].name: X_test.to_numpy(dtype=np.float32)})[0]
                parity = bool((np.asarray(onnx_pred) == model.predict(X_test)).all())
                if parity:
                    path = os.path.join(tmp, "model.onnx")
                    with open(path, "wb") as fh:
                        fh.write(onx.SerializeToString())
                    mlflow.log_artifact(path, "onnx")
        mlflow.set_tags(
            {
                "feature_names": json.dumps(list(X.columns)),
                "label_column": "target",
                "retrain_run": run_tag,
                "onnx_parity": "true" if parity else "false",
            }
        )
    mv = mlflow.register_model(logged.model_uri, model_name)
    client.set_model_version_tag(model_name, mv.version, "retrain_run", run_tag)
    client.set_model_version_tag(model_name, mv.version, "run_id", run_id)
    client.set_tag(run_id, "registered_version", str(mv.version))
    if set_champion:
        client.set_registered_model_alias(model_name, "champion", mv.version)
    return Registered(model_name, str(mv.version), run_id, parity)


def set_champion(tracking_uri: str, model_name: str, version: str) -> None:
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri=tracking_uri).set_registered_model_alias(model_name, "champion", version)
