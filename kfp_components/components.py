"""The retrain pipeline's KFP components: typed, thin wrappers around `kfp_components.steps`.

Each component imports what it needs inside its body (KFP runs it as a separate program, from the
function's source in the compiled YAML) and configures the process's logging first
(`driftloop.logs.configure_logging`: the steps log through their module loggers). None installs
packages at run time: the embedded runner uses the project's venv (the project is installed in it),
and cluster runs use the components image built from `kfp_components/Dockerfile` (which installs the
`driftloop` and `kfp_components` packages), whose name is a compile-time setting (`COMPONENT_IMAGE`).
"""

import os

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

COMPONENT_IMAGE = os.environ.get("COMPONENT_IMAGE", "driftloop/components:0.1.0")


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def load_data(
    data_uri: str,
    dataset: Output[Dataset],
    feedback: Output[Dataset],
    label_column: str = "target",
    feedback_url: str = "",
) -> None:
    """Read the training table (bundled iris when data_uri is empty) into `dataset` and the labelled
    feedback from the serving app (when feedback_url is set) into `feedback`, a separate table with the
    same columns (no rows without feedback): feedback keeps its provenance so that it never enters the
    trusted held-out set."""
    import os

    from driftloop.logs import configure_logging
    from kfp_components.steps.data import describe, load_training_data

    configure_logging()
    data = load_training_data(data_uri, label_column, feedback_url, os.environ.get("SERVING_ADMIN_TOKEN"))
    data.base.to_csv(dataset.path, index=False)
    dataset.metadata.update(describe(data.base, label_column))
    data.feedback.to_csv(feedback.path, index=False)
    feedback.metadata.update({**describe(data.feedback, label_column), "provenance": "feedback"})


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def train_model(
    dataset: Input[Dataset],
    feedback: Input[Dataset],
    mlflow_tracking_uri: str,
    metrics: Output[Metrics],
    holdout: Output[Dataset],
    feedback_holdout: Output[Dataset],
    experiment_name: str = "retrain",
    label_column: str = "target",
    n_estimators: int = 100,
    max_depth: int = 0,
    random_state: int = 42,
    test_size: float = 0.2,
    run_tag: str = "",
) -> str:
    """Train a candidate on the data set plus the feedback's training share and log it with its drift
    reference to MLflow; writes the trusted held-out rows (data set only) and the held-out feedback rows
    as separate artifacts; returns the MLflow run id."""
    import pandas as pd

    from driftloop.logs import configure_logging
    from kfp_components.steps.train import TrainConfig, train_and_log

    configure_logging()
    frame = pd.read_csv(dataset.path)
    feedback_frame = pd.read_csv(feedback.path)
    cfg = TrainConfig(n_estimators=n_estimators, max_depth=max_depth, random_state=random_state, test_size=test_size)
    result = train_and_log(
        frame, label_column, mlflow_tracking_uri, experiment_name, cfg, run_tag, dataset.uri, feedback=feedback_frame
    )
    result.holdout.to_csv(holdout.path, index=False)
    holdout.metadata.update({"rows": len(result.holdout), "provenance": "data set"})
    result.feedback_holdout.to_csv(feedback_holdout.path, index=False)
    feedback_holdout.metadata.update({"rows": len(result.feedback_holdout), "provenance": "feedback"})
    for name in ("accuracy", "f1_weighted", "feedback_accuracy"):
        if name in result.metrics:
            metrics.log_metric(name, result.metrics[name])
    return result.mlflow_run_id


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def validate_model(
    mlflow_run_id: str,
    holdout: Input[Dataset],
    feedback_holdout: Input[Dataset],
    mlflow_tracking_uri: str,
    model_name: str,
    label_column: str = "target",
    min_accuracy: float = 0.9,
    tolerance: float = 0.0,
) -> bool:
    """True when the candidate (MLflow run mlflow_run_id) reaches min_accuracy on the trusted held-out rows
    and is not worse than the champion there nor on the held-out feedback rows (see
    kfp_components.steps.validate)."""
    import pandas as pd

    from driftloop.logs import configure_logging
    from kfp_components.steps.validate import validate_candidate

    configure_logging()
    decision = validate_candidate(
        mlflow_run_id,
        pd.read_csv(holdout.path),
        label_column,
        mlflow_tracking_uri,
        model_name,
        min_accuracy,
        tolerance,
        feedback_holdout=pd.read_csv(feedback_holdout.path),
    )
    return decision.accepted


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def register_model(mlflow_run_id: str, mlflow_tracking_uri: str, model_name: str, run_tag: str = "") -> str:
    """Register the candidate (MLflow run mlflow_run_id) and point alias `champion` at it; returns the version."""
    from driftloop.logs import configure_logging
    from kfp_components.steps.register import register_candidate

    configure_logging()
    return register_candidate(mlflow_run_id, mlflow_tracking_uri, model_name, run_tag)


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def deploy_model(
    model_version: str,
    model_name: str,
    deploy_target: str = "local",
    serving_url: str = "",
    k8s_namespace: str = "mlops",
    k8s_deployment: str = "ml-api",
) -> str:
    """Roll the new champion out to the serving app (see kfp_components.steps.deploy): `local` reloads it
    at serving_url; `kubernetes` reloads it through its Service at serving_url, then restarts the
    Deployment k8s_namespace/k8s_deployment and waits for the rollout. The admin token comes from
    the environment variable SERVING_ADMIN_TOKEN (on a cluster from the pipeline's Secret)."""
    from driftloop.logs import configure_logging
    from kfp_components.steps.deploy import deploy

    configure_logging()
    return deploy(deploy_target, model_name, model_version, serving_url, k8s_namespace, k8s_deployment)
