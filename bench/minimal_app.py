"""The ceiling: a minimal Flask app that only predicts with the champion (no input checks, no drift
logging, no metrics). Run by gunicorn as `bench.minimal_app:create_app()`; MINIMAL_ENGINE picks
`onnx` (the champion run's ONNX artifact on onnxruntime, one thread) or `sklearn`."""

from __future__ import annotations

import os

import numpy as np
from flask import Flask, jsonify, request


def _predictor():
    import mlflow
    from mlflow.tracking import MlflowClient

    name = os.environ.get("MODEL_NAME", "iris-model")
    if os.environ.get("MINIMAL_ENGINE", "onnx") == "sklearn":
        model = mlflow.sklearn.load_model(f"models:/{name}@champion")
        columns = list(model.feature_names_in_)
        import pandas as pd

        return lambda row: model.predict(pd.DataFrame([row], columns=columns))[0]
    import onnxruntime as ort

    client = MlflowClient()
    run_id = client.get_model_version_by_alias(name, "champion").run_id
    path = client.download_artifacts(run_id, "onnx/model.onnx")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    return lambda row: session.run(None, {input_name: np.asarray([row], dtype=np.float32)})[0][0]


def create_app() -> Flask:
    predict_row = _predictor()
    app = Flask(__name__)

    @app.post("/predict")
    def predict():
        return jsonify(prediction=int(predict_row(request.get_json()["features"])))

    @app.get("/health")
    def health():
        return jsonify(status="ok")

    return app
