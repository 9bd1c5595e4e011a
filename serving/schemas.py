"""The HTTP API's request and response bodies, defined once as pydantic models.

The request models validate the bodies (serving/inputs.py turns their errors into messages that name
what was wrong) and every model gives its JSON Schema to the OpenAPI document (serving/openapi.py).
The request models depend on the served model (the feature count) and on SERVING_MAX_BATCH, so
`request_models(n_features, max_batch)` builds them for those values (cached: one set per served
feature count). Why pydantic: it is already installed (Airflow and MLflow depend on it), it validates
a 1000-row batch faster than the hand-written loop it replaces, and `model_json_schema` gives the
document the very constraints the validation applies.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import (
    Annotated,
    Any,
    Literal,
    NotRequired,  # pydantic needs this TypedDict before Python 3.12
)

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictInt, TypeAdapter
from typing_extensions import TypedDict

from serving.model import ModelSource

# Tree models (sklearn and ONNX) compute in float32: larger magnitudes would become inf there.
FLOAT_LIMIT = float(np.finfo(np.float32).max)
LABEL_MAX_LENGTH = 200
SOURCE_MAX_LENGTH = 64
# letters, digits and ' ._:/@+-', starting with a letter or digit: short, printable, one line, and
# never a spreadsheet formula when the provenance export is opened as CSV (no leading = + - @)
SOURCE_PATTERN = "^[A-Za-z0-9][A-Za-z0-9 ._:/@+-]*$"
REF = "#/components/schemas/{model}"

#: One feature value: a JSON number (never a boolean or a string), finite, within the float32 range.
FeatureValue = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=-FLOAT_LIMIT, le=FLOAT_LIMIT)]
#: A true label: an integer class or a class name.
Label = StrictInt | Annotated[str, Field(strict=True, min_length=1, max_length=LABEL_MAX_LENGTH)]
Source = Annotated[
    str,
    Field(
        strict=True,
        min_length=1,
        max_length=SOURCE_MAX_LENGTH,
        pattern=SOURCE_PATTERN,
        description="optional: who or what labelled the rows (stored with them as provenance)",
    ),
]


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


_OPTIONAL: Any = Field(None, json_schema_extra=_no_default)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


@dataclass(frozen=True)
class RequestModels:
    """The request bodies for one feature count and batch limit."""

    n_features: int | None
    max_batch: int
    predict_one: type[_Body]
    predict_batch: type[_Body]
    feedback_one: type[_Body]
    feedback_batch: type[_Body]


@functools.lru_cache(maxsize=16)
def request_models(
    n_features: int | None, max_batch: int, feature_names: tuple[str, ...] | None = None
) -> RequestModels:
    """The request models; `n_features` None (no model loaded yet) leaves the row length open."""
    described = f" ({', '.join(feature_names)})" if feature_names else ""
    Row = Annotated[
        list[FeatureValue],
        Field(
            min_length=n_features,
            max_length=n_features,
            description=f"One row: the feature values in the order of the model's feature names{described}",
        ),
    ]
    Rows = Annotated[list[Row], Field(min_length=1, max_length=max_batch)]

    class PredictOne(_Body):
        features: Row

    class PredictBatch(_Body):
        instances: Rows

    class FeedbackOne(_Body):
        features: Row
        label: Label = Field(description="the true label of the row")
        source: Source = _OPTIONAL  # may be left out, never null

    class FeedbackBatch(_Body):
        instances: Rows
        labels: list[Label] = Field(description="one true label per row")
        source: Source = _OPTIONAL  # may be left out, never null

    return RequestModels(n_features, max_batch, PredictOne, PredictBatch, FeedbackOne, FeedbackBatch)


# -- responses: the views build these bodies (typed by these TypedDicts, checked by mypy) ---------
class Error(TypedDict):
    error: str


class LoadErrorInfo(TypedDict):
    message: str
    kind: str
    version: str | None
    at: str


class ReloadInfo(TypedDict):
    ok: bool
    version: str | None
    message: str | None
    at: str


class StoreInfo(TypedDict):
    ok: bool
    location: str
    message: NotRequired[str]
    since: NotRequired[str]


class Health(TypedDict):
    status: Literal["ok", "degraded", "not ready"]
    ready: bool
    model_name: str
    model_version: str | None
    backend: str | None
    reason: NotRequired[str]
    model_source: NotRequired[ModelSource]
    following: Annotated[
        bool,
        Field(
            description=(
                "this worker is loading the version the served record names (after a reload elsewhere); a prediction "
                "waits for it, this probe does not"
            )
        ),
    ]
    load_error: LoadErrorInfo | None
    last_reload: ReloadInfo | None
    store: StoreInfo


class Liveness(TypedDict):
    status: str


class ModelInfo(TypedDict):
    name: str
    version: str
    alias: str
    run_id: str
    feature_names: list[str]
    n_features: int
    loaded_at: str
    backend: str
    backend_note: str | None
    source: ModelSource
    reference_samples: int
    window_started_at: str
    load_error: LoadErrorInfo | None
    last_reload: ReloadInfo | None


PredictedLabel = StrictInt | float | str


class Prediction(TypedDict):
    prediction: NotRequired[PredictedLabel]
    predictions: NotRequired[list[PredictedLabel]]
    model_name: str
    model_version: str
    backend: Literal["onnx", "sklearn"]
    count: NotRequired[int]


class FeatureDrift(TypedDict):
    name: str
    ks_stat: float
    p_value: float
    p_adjusted: float
    drift: bool


class HotellingT2(TypedDict):
    statistic: float
    p_value: float
    dimensions: Annotated[int, Field(description="directions tested: features not constant in the reference")]
    distribution: Annotated[str, Field(description="the null distribution used: F(k, n-k), chi2(k) or none")]


class MahalanobisTest(TypedDict):
    statistic: Annotated[float, Field(description="Mann-Whitney U of the window's squared distances")]
    p_value: float
    window_median: float
    reference_median: float


class MultivariateTests(TypedDict):
    hotelling_t2: HotellingT2
    hotelling_t2_scores: Annotated[HotellingT2, Field(description="the same test on the values' normal scores")]
    mahalanobis: MahalanobisTest


class DriftStatus(TypedDict):
    drift_detected: bool
    threshold: float
    samples: int
    reason: NotRequired[Annotated[str, Field(description="present while collecting samples")]]
    features: dict[str, FeatureDrift]
    feature_names: list[str]
    drifted_features: NotRequired[list[str]]
    correction: Literal["acat", "bonferroni", "bh", "none"]
    combined_p_value: NotRequired[
        Annotated[
            float, Field(description="acat: all tests combined by the Cauchy combination; drift when < threshold")
        ]
    ]
    multivariate: NotRequired[MultivariateTests]
    adjusted_threshold: float
    window_size: int
    min_samples: int
    reference_samples: int
    model_name: NotRequired[str]
    model_version: NotRequired[str]
    run_id: NotRequired[str]
    window_started_at: NotRequired[str]
    checked_at: NotRequired[str]
    window_epoch: NotRequired[
        Annotated[int, Field(description="the drift-window epoch: a new served version starts a new one")]
    ]
    window_resets: NotRequired[
        Annotated[int, Field(description="how many times POST /drift/reset emptied this epoch's window (0 first)")]
    ]
    window_first_row: NotRequired[
        Annotated[
            int | None,
            Field(description="store id of the oldest row tested (ids grow within an epoch); null: empty window"),
        ]
    ]
    window_last_row: NotRequired[
        Annotated[int | None, Field(description="store id of the newest row tested; null: empty window")]
    ]
    labelled_rows: NotRequired[Annotated[int, Field(description="labelled feedback rows stored for this model name")]]
    labelled_rows_since_served: NotRequired[
        Annotated[int, Field(description="those received at or after the served version's activation")]
    ]


class DriftReset(TypedDict):
    status: Literal["reset"]
    dropped: int
    model_version: str
    window_resets: Annotated[int, Field(description="the epoch's reset count after this reset")]


class Reload(TypedDict):
    status: Literal["reloaded"]
    name: str
    version: str
    previous_version: str | None
    changed: bool
    run_id: str
    alias: str
    backend: str
    loaded_at: str
    window_restarted: bool
    generation: int


class FeedbackStored(TypedDict):
    status: Literal["stored"]
    rows: int
    total: int


RESPONSES: tuple[Any, ...] = (
    Error,
    Health,
    Liveness,
    ModelInfo,
    Prediction,
    DriftStatus,
    DriftReset,
    Reload,
    FeedbackStored,
)


def components(models: RequestModels) -> dict[str, Any]:
    """`components.schemas` of the OpenAPI 3.0 document: every model above in OpenAPI 3.0's dialect
    (`nullable` instead of a null type, `enum` instead of `const`, no titles), the row as `Row`, the
    request unions as `PredictRequest` and `FeedbackRequest`."""
    requests_ = (models.predict_one, models.predict_batch, models.feedback_one, models.feedback_batch)
    adapters = [(i, "validation", TypeAdapter(t)) for i, t in enumerate((*requests_, *RESPONSES))]
    _, top = TypeAdapter.json_schemas(adapters, ref_template=REF)  # type: ignore[arg-type]
    defs: dict[str, Any] = {name: _openapi30(schema) for name, schema in top["$defs"].items()}
    row = defs[models.predict_one.__name__]["properties"]["features"]
    schemas = {"Row": row, **{name: _with_row_ref(s, row) for name, s in defs.items()}}
    for name, one, many in (
        ("PredictRequest", models.predict_one, models.predict_batch),
        ("FeedbackRequest", models.feedback_one, models.feedback_batch),
    ):
        schemas[name] = {"oneOf": [schemas.pop(one.__name__), schemas.pop(many.__name__)]}
    return schemas


def _openapi30(node: Any) -> Any:
    """A JSON Schema (pydantic's draft 2020-12 output) in the OpenAPI 3.0 dialect."""
    if isinstance(node, list):
        return [_openapi30(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _openapi30(v) for k, v in node.items() if not (k == "title" and isinstance(v, str))}
    options = out.get("anyOf")
    if isinstance(options, list) and {"type": "null"} in options:
        rest = [o for o in options if o != {"type": "null"}]
        del out["anyOf"]
        if len(rest) == 1 and "$ref" not in rest[0]:
            out = {**rest[0], **out}
        else:
            out["anyOf" if len(rest) > 1 else "allOf"] = rest
        out["nullable"] = True
    if "const" in out:
        out["enum"] = [out.pop("const")]
    return out


def _with_row_ref(node: Any, row: dict[str, Any]) -> Any:
    if node == row:
        return {"$ref": REF.format(model="Row")}
    if isinstance(node, dict):
        return {k: _with_row_ref(v, row) for k, v in node.items()}
    if isinstance(node, list):
        return [_with_row_ref(v, row) for v in node]
    return node
