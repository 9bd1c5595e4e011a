"""The `ml-retrain-pipeline`: wiring only; the work is in the components.

On a KFP cluster each step pod reads the credentials it needs from the Kubernetes Secret
`PIPELINE_SECRET` (a compile-time setting like `COMPONENT_IMAGE`; env `PIPELINE_SECRET`, default
`driftloop-pipeline`, in the run's namespace) as environment variables: the compiled YAML carries them
as a kfp-kubernetes platform spec (`platforms.kubernetes ... secretAsEnv`). KFP's local runner never
reads the platform spec: there the steps inherit the caller's environment.
"""

import os

from kfp import dsl, kubernetes

from driftloop.contract import DEFAULT_MODEL_NAME, PIPELINE_NAME
from kfp_components.components import deploy_model, load_data, register_model, train_model, validate_model

DEFAULT_MLFLOW_TRACKING_URI = "http://127.0.0.1:5000"
DEFAULT_SERVING_URL = "http://127.0.0.1:8000"
PIPELINE_SECRET = os.environ.get("PIPELINE_SECRET", "driftloop-pipeline")
MLFLOW_LOGIN = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
SERVING_TOKEN = ("SERVING_ADMIN_TOKEN",)


def with_secret_env(task: dsl.PipelineTask, keys: tuple[str, ...]) -> dsl.PipelineTask:
    """Give the task's pod `keys` of the Secret PIPELINE_SECRET as environment variables of the same
    names (each step gets only the keys it uses). The Secret and its keys must exist: a pod without
    them does not start, rather than run a step that fails later on a 401."""
    return kubernetes.use_secret_as_env(task, secret_name=PIPELINE_SECRET, secret_key_to_env={key: key for key in keys})


@dsl.pipeline(
    name=PIPELINE_NAME, description="Load data, train, validate against the champion, register in MLflow and deploy"
)
def retrain_pipeline(
    data_uri: str = "",
    label_column: str = "target",
    feedback_url: str = "",
    mlflow_tracking_uri: str = DEFAULT_MLFLOW_TRACKING_URI,
    experiment_name: str = "retrain",
    model_name: str = DEFAULT_MODEL_NAME,
    min_accuracy: float = 0.9,
    tolerance: float = 0.0,
    n_estimators: int = 100,
    max_depth: int = 0,
    random_state: int = 42,
    test_size: float = 0.2,
    deploy_target: str = "local",
    serving_url: str = DEFAULT_SERVING_URL,
    k8s_namespace: str = "mlops",
    k8s_deployment: str = "ml-api",
    run_tag: str = "",
) -> None:
    data = load_data(data_uri=data_uri, label_column=label_column, feedback_url=feedback_url)
    data.set_caching_options(False)
    with_secret_env(data, SERVING_TOKEN)  # the feedback export of feedback_url
    train = train_model(
        dataset=data.outputs["dataset"],
        feedback=data.outputs["feedback"],
        mlflow_tracking_uri=mlflow_tracking_uri,
        experiment_name=experiment_name,
        label_column=label_column,
        n_estimators=n_estimators,
        max_depth=max_depth,
        random_state=random_state,
        test_size=test_size,
        run_tag=run_tag,
    )
    train.set_caching_options(False)
    with_secret_env(train, MLFLOW_LOGIN)
    validate = validate_model(
        mlflow_run_id=train.outputs["Output"],
        holdout=train.outputs["holdout"],
        feedback_holdout=train.outputs["feedback_holdout"],
        mlflow_tracking_uri=mlflow_tracking_uri,
        model_name=model_name,
        label_column=label_column,
        min_accuracy=min_accuracy,
        tolerance=tolerance,
    )
    validate.set_caching_options(False)
    with_secret_env(validate, MLFLOW_LOGIN)
    with dsl.If(validate.output == True):  # noqa: E712 - KFP needs the comparison to build the condition
        register = register_model(
            mlflow_run_id=train.outputs["Output"],
            mlflow_tracking_uri=mlflow_tracking_uri,
            model_name=model_name,
            run_tag=run_tag,
        )
        register.set_caching_options(False)
        with_secret_env(register, MLFLOW_LOGIN)
        deploy = deploy_model(
            model_version=register.output,
            model_name=model_name,
            deploy_target=deploy_target,
            serving_url=serving_url,
            k8s_namespace=k8s_namespace,
            k8s_deployment=k8s_deployment,
        )
        deploy.set_caching_options(False)
        with_secret_env(deploy, SERVING_TOKEN)  # POST /model/reload
