"""Deciding whether a candidate may replace the champion: it must reach `min_accuracy` and must not
be worse than the current champion on the same held-out data (by more than `tolerance`). The
decision and its reason are written to the candidate's MLflow run."""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from sklearn.metrics import accuracy_score

from kfp_components.steps.errors import StepError
from kfp_components.steps.tracking import candidate_model_uri, connect, get_champion, run_feature_names


@dataclass
class Decision:
    accepted: bool
    reason: str
    candidate_accuracy: float
    champion_accuracy: float | None = None
    champion_version: str | None = None


def decide(candidate_accuracy: float, min_accuracy: float, champion_accuracy: float | None,
           tolerance: float = 0.0, champion_version: str | None = None) -> Decision:
    """The rule itself, free of MLflow."""
    if candidate_accuracy < min_accuracy:
        return Decision(False, f"accuracy {candidate_accuracy:.4f} is below min_accuracy {min_accuracy:.4f}",
                        candidate_accuracy, champion_accuracy, champion_version)
    if champion_accuracy is not None and candidate_accuracy < champion_accuracy - tolerance:
        return Decision(False, f"accuracy {candidate_accuracy:.4f} is worse than champion version "
                               f"{champion_version} ({champion_accuracy:.4f}, tolerance {tolerance:.4f}) on the same held-out data",
                        candidate_accuracy, champion_accuracy, champion_version)
    against = (f"; champion version {champion_version} scores {champion_accuracy:.4f} on the same held-out data"
               if champion_accuracy is not None else "; no champion to compare with")
    return Decision(True, f"accuracy {candidate_accuracy:.4f} >= min_accuracy {min_accuracy:.4f}{against}",
                    candidate_accuracy, champion_accuracy, champion_version)


def validate_candidate(run_id: str, holdout: pd.DataFrame, label_column: str, mlflow_uri: str,
                       model_name: str, min_accuracy: float, tolerance: float = 0.0) -> Decision:
    if not 0.0 <= min_accuracy <= 1.01:
        raise StepError(f"min_accuracy={min_accuracy}: must be between 0 and 1 (values above 1 reject every candidate)")
    if tolerance < 0:
        raise StepError(f"tolerance={tolerance}: must not be negative")
    client = connect(mlflow_uri)
    import mlflow

    features = [c for c in holdout.columns if c != label_column]
    x_hold, y_hold = holdout[features], holdout[label_column]
    candidate = mlflow.sklearn.load_model(candidate_model_uri(client, run_id))
    candidate_accuracy = float(accuracy_score(y_hold, candidate.predict(x_hold)))

    champion_accuracy = None
    champion = get_champion(client, model_name)
    if champion is not None:
        champion_features = run_feature_names(client, champion.run_id) if champion.run_id else None
        if champion_features is not None and champion_features != features:
            print(f"Champion version {champion.version} uses features {champion_features}, the candidate "
                  f"{features}: compared against min_accuracy only")
            champion = None
        else:
            try:
                champion_model = mlflow.sklearn.load_model(f"models:/{model_name}/{champion.version}")
            except Exception as exc:
                raise StepError(f"champion {model_name} version {champion.version} cannot be loaded to compare "
                                f"with: {exc}") from exc
            champion_accuracy = float(accuracy_score(y_hold, champion_model.predict(x_hold)))

    decision = decide(candidate_accuracy, min_accuracy, champion_accuracy, tolerance,
                      champion.version if champion is not None else None)
    client.set_tag(run_id, "validation_decision", "accepted" if decision.accepted else "rejected")
    client.set_tag(run_id, "validation_reason", decision.reason)
    if champion_accuracy is not None:
        client.log_metric(run_id, "champion_accuracy", champion_accuracy)
    print(f"Validation {'PASSED' if decision.accepted else 'FAILED'}: {decision.reason}")
    return decision
