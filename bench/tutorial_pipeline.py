"""The tutorial's retrain pipeline (../shared/seed, "kubeflow/pipeline.py"), the baseline `make bench`
times `make retrain` against: same local runner, same venv, same MLflow server.

Only what stops it from running here is patched, each marked `PATCHED`:
- no `packages_to_install` (its pins, scikit-learn 1.3.2 / mlflow 2.9.2, do not install on Python 3.11,
  and installing at run time would time pip, not the pipeline): it runs in the project's venv, as ours;
- the MLflow URL and model name come from the caller (the tutorial's default is a cluster DNS name);
- MLflow 3 saves scikit-learn models with skops and refuses the forest unless its tree type is named
  trusted: the tutorial's MLflow 2.9 pickled it, and so does this copy;
- `train_task.output` is an error in KFP v2 when the component has a second output: named instead;
- deploy_model patches a Deployment through the Kubernetes API: with no cluster here it imports the
  client and loads the configuration as the tutorial does, then returns instead of failing.
Everything else (its imports, the MLflow calls, stages instead of aliases) is the tutorial's.

`python -m bench.tutorial_pipeline --output PATH` compiles it.
"""

# ruff: noqa: E712, E501

import argparse

from kfp import compiler, dsl
from kfp.dsl import Dataset, Input, Metrics, Output

BASE_IMAGE = "python:3.11-slim"  # PATCHED: unused by the local subprocess runner


@dsl.component(base_image=BASE_IMAGE)  # PATCHED: no packages_to_install
def load_data(dataset: Output[Dataset]):
    """Load training data"""
    import json

    import numpy as np
    from sklearn.datasets import load_iris

    iris = load_iris()

    # Save data
    np.save(f"{dataset.path}_X.npy", iris.data)
    np.save(f"{dataset.path}_y.npy", iris.target)

    # Save metadata
    with open(dataset.path, "w") as f:
        json.dump(
            {"n_samples": len(iris.data), "n_features": iris.data.shape[1], "feature_names": iris.feature_names}, f
        )


@dsl.component(base_image=BASE_IMAGE)  # PATCHED: no packages_to_install
def train_model(dataset: Input[Dataset], mlflow_uri: str, model_name: str, metrics_out: Output[Metrics]) -> str:
    """Train model and log to MLflow"""
    from datetime import datetime

    import mlflow
    import mlflow.sklearn
    import numpy as np
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.model_selection import train_test_split

    # Load data
    X = np.load(f"{dataset.path}_X.npy")
    y = np.load(f"{dataset.path}_y.npy")

    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.2, random_state=42)

    # Setup MLflow
    mlflow.set_tracking_uri(mlflow_uri)
    mlflow.set_experiment("kubeflow-retrain")

    with mlflow.start_run(run_name=f"kfp_{datetime.now().strftime('%Y%m%d_%H%M%S')}"):
        # Train
        model = RandomForestClassifier(n_estimators=100, random_state=42)
        model.fit(X_train, y_train)

        # Evaluate
        y_pred = model.predict(X_test)
        accuracy = accuracy_score(y_test, y_pred)
        f1 = f1_score(y_test, y_pred, average="weighted")

        # Log to MLflow
        mlflow.log_params({"n_estimators": 100, "random_state": 42})
        mlflow.log_metrics({"accuracy": accuracy, "f1_score": f1})
        # PATCHED: MLflow 3 saves with skops and refuses the forest's tree type unless trusted; the
        # tutorial's MLflow 2.9 pickled it (its default, kept here)
        mlflow.sklearn.log_model(model, "model", serialization_format="cloudpickle")

        # Save reference data
        np.save("/tmp/reference_data.npy", X_train)
        mlflow.log_artifact("/tmp/reference_data.npy", "drift")

        run_id = mlflow.active_run().info.run_id

        # Log metrics for Kubeflow
        metrics_out.log_metric("accuracy", accuracy)
        metrics_out.log_metric("f1_score", f1)

        return run_id


@dsl.component(base_image=BASE_IMAGE)  # PATCHED: no packages_to_install
def validate_model(run_id: str, mlflow_uri: str, model_name: str, min_accuracy: float = 0.9) -> bool:
    """Validate model meets threshold"""
    import mlflow

    mlflow.set_tracking_uri(mlflow_uri)
    client = mlflow.tracking.MlflowClient()

    # Get run metrics
    run = client.get_run(run_id)
    accuracy = run.data.metrics.get("accuracy", 0)

    print(f"Model accuracy: {accuracy}")
    print(f"Minimum required: {min_accuracy}")

    is_valid = accuracy >= min_accuracy
    print(f"Validation: {'PASSED' if is_valid else 'FAILED'}")

    return is_valid


@dsl.component(base_image=BASE_IMAGE)  # PATCHED: no packages_to_install
def register_model(run_id: str, mlflow_uri: str, model_name: str) -> str:
    """Register model to MLflow and promote to Production"""
    import mlflow

    mlflow.set_tracking_uri(mlflow_uri)
    client = mlflow.tracking.MlflowClient()

    # Register model
    model_uri = f"runs:/{run_id}/model"
    result = mlflow.register_model(model_uri, model_name)

    # Promote to Production
    client.transition_model_version_stage(
        name=model_name, version=result.version, stage="Production", archive_existing_versions=True
    )

    print(f"Model {model_name} version {result.version} promoted to Production")
    return result.version


@dsl.component(base_image=BASE_IMAGE)  # PATCHED: no packages_to_install
def deploy_model(model_version: str, namespace: str = "mlops") -> str:
    """Trigger Kubernetes deployment rollout"""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except Exception:
        try:
            config.load_kube_config()
        except Exception as exc:  # PATCHED: no cluster here; the tutorial would fail
            print(f"no Kubernetes cluster ({exc}); rollout of version {model_version} skipped")
            return "skipped"

    apps_v1 = client.AppsV1Api()
    patch = {
        "spec": {
            "template": {
                "metadata": {
                    "annotations": {
                        "kubectl.kubernetes.io/restartedAt": __import__("datetime").datetime.now().isoformat()
                    }
                }
            }
        }
    }
    apps_v1.patch_namespaced_deployment(name="ml-api", namespace=namespace, body=patch)
    print(f"Deployment ml-api restarted to load model version {model_version}")
    return "success"


@dsl.pipeline(name="ml-retrain-pipeline", description="Retrain and deploy ML model")
def retrain_pipeline(mlflow_uri: str, model_name: str, min_accuracy: float = 0.9):  # PATCHED: no cluster defaults
    """Main retraining pipeline"""
    load_task = load_data()
    train_task = train_model(dataset=load_task.outputs["dataset"], mlflow_uri=mlflow_uri, model_name=model_name)
    run_id = train_task.outputs["Output"]  # PATCHED: `.output` is an error with a second output (metrics_out)
    validate_task = validate_model(
        run_id=run_id, mlflow_uri=mlflow_uri, model_name=model_name, min_accuracy=min_accuracy
    )
    with dsl.Condition(validate_task.output == True):
        register_task = register_model(run_id=run_id, mlflow_uri=mlflow_uri, model_name=model_name)
        deploy_model(model_version=register_task.output)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", required=True)
    compiler.Compiler().compile(pipeline_func=retrain_pipeline, package_path=parser.parse_args(argv).output)


if __name__ == "__main__":
    main()
