"""Reading and checking training data: a CSV or Parquet table (or the bundled iris set) whose label
column holds the classes and whose every other column is a numeric feature, and, apart from it, the
labelled feedback exported by the serving app.

The two are never merged here: the data set's own rows are the only ones trusted to judge a candidate
(see `kfp_components.steps.train.split_with_feedback`), so feedback keeps its provenance by travelling
as a table of its own with the same columns."""

from __future__ import annotations

import io
import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pandas as pd
import requests

from kfp_components.steps.errors import StepError

logger = logging.getLogger(__name__)

BUNDLED_IRIS = Path(__file__).resolve().parent.parent / "data" / "iris.csv"
FEEDBACK_LABEL_COLUMN = "target"
MIN_ROWS = 10


def feature_columns(frame: pd.DataFrame, label_column: str) -> list[Any]:
    """Every column but the label, in the table's order: the features."""
    return [c for c in frame.columns if c != label_column]


def _local_path(data_uri: str) -> Path:
    parsed = urlparse(data_uri)
    if parsed.scheme == "file":
        return Path(parsed.path)
    return Path(data_uri)


def read_table(data_uri: str) -> pd.DataFrame:
    """Read `data_uri` ('' for the bundled iris set): a local path, file:// or http(s):// URL, as
    Parquet when it ends in .parquet/.pq, else as CSV."""
    if not data_uri:
        return pd.read_csv(BUNDLED_IRIS)
    scheme = urlparse(data_uri).scheme
    source: str | Path
    is_parquet = data_uri.lower().split("?")[0].endswith((".parquet", ".pq"))
    if scheme in ("http", "https"):
        source = data_uri
    elif scheme in ("", "file"):
        source = _local_path(data_uri)
        if not source.exists():
            raise StepError(f"data_uri {data_uri!r}: file not found")
        if not source.is_file():
            raise StepError(f"data_uri {data_uri!r}: not a regular file")
    else:
        raise StepError(
            f"data_uri {data_uri!r}: unsupported scheme {scheme!r} (use a path, file://, http:// or https://)"
        )
    try:
        frame = pd.read_parquet(source) if is_parquet else pd.read_csv(source)
    except Exception as exc:  # pandas raises many types for unreadable input
        kind = "Parquet" if is_parquet else "CSV"
        raise StepError(f"data_uri {data_uri!r}: cannot be read as {kind}: {exc}") from exc
    if frame.empty:
        raise StepError(f"data_uri {data_uri!r}: the table has no rows")
    return frame


def fetch_feedback(feedback_url: str, token: str | None, timeout: float = 30.0) -> pd.DataFrame:
    """Labelled rows exported by the serving app (`GET /feedback/export`, CSV with a `target` column)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        resp = requests.get(feedback_url, headers=headers, timeout=timeout)
    except requests.RequestException as exc:
        raise StepError(f"feedback_url {feedback_url!r}: not reachable: {exc}") from exc
    if resp.status_code in (401, 403):
        raise StepError(
            f"feedback_url {feedback_url!r}: HTTP {resp.status_code}; "
            f"set SERVING_ADMIN_TOKEN to the serving app's admin token"
        )
    if resp.status_code != 200:
        raise StepError(f"feedback_url {feedback_url!r}: HTTP {resp.status_code}: {resp.text[:200]}")
    if not resp.text.strip():
        return pd.DataFrame()
    try:
        return pd.read_csv(io.StringIO(resp.text))
    except Exception as exc:
        raise StepError(f"feedback_url {feedback_url!r}: the answer is not CSV: {exc}") from exc


def check_frame(
    frame: pd.DataFrame, label_column: str, source: str, min_rows: int = MIN_ROWS, min_classes: int = 2
) -> pd.DataFrame:
    """Return `frame` with float features and the label last, or raise a StepError naming what is wrong.

    Feedback is checked with min_rows=1, min_classes=1: a few rows of one class are normal there.
    """
    if label_column not in frame.columns:
        raise StepError(f"{source}: no label column {label_column!r}; columns are {list(map(str, frame.columns))}")
    features = feature_columns(frame, label_column)
    if not features:
        raise StepError(f"{source}: no feature columns besides the label column {label_column!r}")
    bad = []
    for col in features:
        converted = pd.to_numeric(frame[col], errors="coerce")
        invalid = converted.isna() & frame[col].notna()
        if invalid.any() or frame[col].dtype == bool:
            example = frame[col][invalid].iloc[0] if invalid.any() else frame[col].iloc[0]
            bad.append(f"{col!r} (e.g. {example!r})")
    if bad:
        raise StepError(f"{source}: non-numeric feature columns: {', '.join(bad)}")
    features_frame = frame[features].apply(pd.to_numeric).astype(float)
    values = features_frame.to_numpy()
    if not np.isfinite(values).all():
        cols = [c for c in features if not np.isfinite(features_frame[c].to_numpy()).all()]
        raise StepError(f"{source}: missing or infinite values in feature columns {cols}")
    labels = frame[label_column]
    if labels.isna().any():
        raise StepError(f"{source}: {int(labels.isna().sum())} rows have no value in label column {label_column!r}")
    if len(frame) < min_rows:
        raise StepError(f"{source}: {len(frame)} rows; at least {min_rows} are needed to train and validate")
    if labels.nunique() < min_classes:
        raise StepError(
            f"{source}: label column {label_column!r} has {labels.nunique()} class(es); "
            f"at least {min_classes} are needed"
        )
    features_frame.columns = [str(c) for c in features]
    features_frame[label_column] = labels.to_numpy()
    return features_frame


@dataclass
class TrainingData:
    """The data set's own rows and the feedback rows, checked, with the same columns (features, then
    the label). `feedback` has no rows when there is no feedback."""

    base: pd.DataFrame
    feedback: pd.DataFrame


def check_feedback(base: pd.DataFrame, feedback: pd.DataFrame, label_column: str, feedback_url: str) -> pd.DataFrame:
    """Feedback rows checked against the data set: the same features in the same order; returned with
    the base table's columns and label type (no rows when there is no feedback)."""
    if feedback.empty:
        return base.iloc[0:0].copy()
    if FEEDBACK_LABEL_COLUMN in feedback.columns and label_column != FEEDBACK_LABEL_COLUMN:
        feedback = feedback.rename(columns={FEEDBACK_LABEL_COLUMN: label_column})
    base_features = feature_columns(base, label_column)
    fb_features = feature_columns(feedback, label_column)
    if fb_features != base_features:
        raise StepError(
            f"feedback_url {feedback_url!r}: feedback features {fb_features} differ from the "
            f"training data's {base_features}"
        )
    checked = check_frame(feedback, label_column, f"feedback_url {feedback_url!r}", min_rows=1, min_classes=1)
    checked[label_column] = checked[label_column].astype(base[label_column].dtype, errors="ignore")
    return checked.reset_index(drop=True)


def load_training_frame(data_uri: str, label_column: str = "target") -> pd.DataFrame:
    """The data set's own rows, checked (no feedback)."""
    source = f"data_uri {data_uri!r}" if data_uri else "bundled iris data"
    return check_frame(read_table(data_uri), label_column, source)


def load_training_data(
    data_uri: str, label_column: str = "target", feedback_url: str = "", token: str | None = None
) -> TrainingData:
    """The data set (bundled iris when data_uri is empty) and the feedback fetched from feedback_url
    (with the serving app's admin `token`; none when feedback_url is empty), each checked."""
    base = load_training_frame(data_uri, label_column)
    feedback = fetch_feedback(feedback_url, token) if feedback_url else pd.DataFrame()
    data = TrainingData(base, check_feedback(base, feedback, label_column, feedback_url))
    base_meta, feedback_meta = describe(data.base, label_column), describe(data.feedback, label_column)
    logger.info(
        "Loaded %d rows, features %s, classes %s; %d feedback rows, classes %s",
        base_meta["rows"],
        base_meta["feature_names"],
        base_meta["class_counts"],
        feedback_meta["rows"],
        feedback_meta["class_counts"],
    )
    return data


def describe(frame: pd.DataFrame, label_column: str) -> dict[str, Any]:
    """Metadata recorded on the Dataset artifact."""
    features = feature_columns(frame, label_column)
    counts = Counter(str(v) for v in frame[label_column].tolist())
    return {
        "rows": int(len(frame)),
        "features": len(features),
        "feature_names": json.dumps(features),
        "class_counts": json.dumps(dict(sorted(counts.items()))),
        "label_column": label_column,
    }
