"""Parsing and validation of request bodies. No Flask here: input is bytes, output a numpy array.

The bodies are validated by the request models of serving/schemas.py (the same models give the
OpenAPI document its schemas); this module decodes the JSON, picks the model by the body's row key
and turns the first validation error into an `InputError` whose message names the problem, with the
HTTP status to answer with. Valid numbers are JSON numbers only: booleans, strings, null,
NaN/Infinity (which Python's json module would otherwise accept), nested lists and magnitudes beyond
the float32 range (tree models compute in float32) are rejected.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import numpy as np
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from serving.schemas import FLOAT_LIMIT, LABEL_MAX_LENGTH, SOURCE_MAX_LENGTH, RequestModels, request_models

ROW_KEYS = ("features", "instances")  # one row, or a batch


class InputError(ValueError):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message = message
        self.status = status


def _reject_constant(name: str) -> Any:
    raise InputError(f"invalid JSON value {name}: only finite numbers are accepted")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)  # made once: json.loads(**kw) makes one a call


def check_content_type(content_type: str | None) -> None:
    """Accept application/json (any parameters, e.g. charset) and application/*+json."""
    if not content_type:
        raise InputError("Content-Type must be application/json (none was given)", 415)
    mime = content_type.split(";", 1)[0].strip().lower()
    if mime == "application/json" or (mime.startswith("application/") and mime.endswith("+json")):
        return
    raise InputError(f"Content-Type must be application/json, got {mime!r}", 415)


def parse_json_object(body: bytes) -> dict[str, Any]:
    """Decode a JSON object; reject anything else with a message naming the problem."""
    if not body:
        raise InputError("request body is empty: expected a JSON object")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError("request body is not valid UTF-8") from None
    try:
        data = _DECODER.decode(text)
    except InputError:
        raise
    except (ValueError, RecursionError) as exc:
        raise InputError(f"malformed JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InputError(f"request body must be a JSON object, got {_json_type(data)}")
    return data


def parse_rows(data: dict[str, Any], n_features: int, max_batch: int) -> tuple[np.ndarray, bool]:
    """`{"features": [..]}` (one row) or `{"instances": [[..], ..]}` -> (float64 array (n, k), is_batch)."""
    models = request_models(n_features, max_batch)
    body = _validate(data, models, models.predict_one, models.predict_batch)
    if "features" in data:
        return np.array([body["features"]], dtype=np.float64), False
    return np.array(body["instances"], dtype=np.float64), True


def parse_feedback(data: dict[str, Any], n_features: int, max_batch: int) -> tuple[np.ndarray, list[int | str]]:
    """`{"features": [..], "label": y}` or `{"instances": [[..]], "labels": [y, ..]}`, each with an
    optional `"source": "..."` (valid once this returns: read it with `data.get("source")`)."""
    models = request_models(n_features, max_batch)
    body = _validate(data, models, models.feedback_one, models.feedback_batch)
    if "features" in data:
        return np.array([body["features"]], dtype=np.float64), [body["label"]]
    X = np.array(body["instances"], dtype=np.float64)
    labels: list[int | str] = body["labels"]
    if len(labels) != len(X):  # a rule JSON Schema cannot state
        raise InputError(f"labels has {len(labels)} values for {len(X)} rows")
    return X, labels


def _validate(
    data: dict[str, Any], models: RequestModels, one: type[BaseModel], many: type[BaseModel]
) -> dict[str, Any]:
    """Validate `data` with `one` (a body with "features") or `many` ("instances"); the validated fields."""
    if not _allowed_fields(one, many).issuperset(data):
        unknown = sorted(set(data) - _allowed_fields(one, many))
        raise InputError(f"unknown field(s) {', '.join(unknown)}: expected {' or '.join(ROW_KEYS)}")
    if "features" in data:
        if "instances" in data:
            raise InputError(f"give either {' or '.join(repr(k) for k in ROW_KEYS)}, not both")
        model, other = one, many
    elif "instances" in data:
        model, other = many, one
    else:
        raise InputError(f"missing field: the body needs {' or '.join(repr(k) for k in ROW_KEYS)}")
    try:
        return vars(model.model_validate(data))
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])  # a misplaced field first
        raise InputError(_message(first, model, other, models)) from None


@functools.cache
def _allowed_fields(one: type[BaseModel], many: type[BaseModel]) -> frozenset[str]:
    return frozenset(one.model_fields) | frozenset(many.model_fields)


def _message(err: ErrorDetails, model: type[BaseModel], other: type[BaseModel], models: RequestModels) -> str:
    """A message naming what is wrong, from a pydantic error of `model` (`other`: the body's other shape)."""
    loc, kind, value = err["loc"], err["type"], err["input"]
    field = str(loc[0]) if loc else ""
    if kind == "extra_forbidden":  # a field of the other shape (unknown ones were refused before)
        wanted = next(k for k in model.model_fields if k not in other.model_fields and k not in ROW_KEYS)
        return f"with '{_row_key(model)}' give '{wanted}' ({_describe(model, wanted)}), not '{field}'"
    if kind == "missing":
        return f"missing field: '{field}' ({_describe(model, field)})"
    where = field + "".join(f"[{i}]" for i in loc[1:])
    if field in ROW_KEYS:
        return _row_message(where, len(loc) - 1, kind, value, err.get("ctx") or {}, models)
    if field == "source":
        if not isinstance(value, str):
            return f"source must be a string, got {_json_type(value)}"
        return (
            f"source must be 1-{SOURCE_MAX_LENGTH} characters: letters, digits and ' ._:/@+-', "
            "starting with a letter or digit"
        )
    if field in ("label", "labels"):
        if field == "labels" and len(loc) == 1:
            return f"labels must be an array, got {_json_type(value)}"
        where = field + "".join(f"[{i}]" for i in loc[1:] if isinstance(i, int))
        if isinstance(value, str):
            return f"{where} must be a non-empty string of at most {LABEL_MAX_LENGTH} characters or an integer"
        return f"{where} must be an integer (or a class name string), got {_json_type(value)}"
    return f"{where}: {err['msg']}"  # pragma: no cover - every field of the request models is named above


def _row_message(where: str, depth: int, kind: str, value: Any, ctx: dict[str, Any], models: RequestModels) -> str:
    """depth: 0 the field itself, 1 a row of `instances` or a value of `features`, 2 a value of a row."""
    n = models.n_features
    is_batch = where.startswith("instances")
    if depth == 0 and is_batch:
        if kind == "too_short":
            return "instances is empty: send at least one row"
        if kind == "too_long":
            return f"instances has {ctx.get('actual_length')} rows, the limit is {models.max_batch} (SERVING_MAX_BATCH)"
        return f"instances must be an array of rows, got {_json_type(value)}"
    if depth == (1 if is_batch else 0):  # a row
        if kind in ("too_short", "too_long"):
            return f"{where} has {ctx.get('actual_length')} values, the model expects {n}"
        return f"{where} must be an array of {n} numbers, got {_json_type(value)}"
    if type(value) in (int, float):  # a number outside the float32 range (or beyond float: 1e400)
        return f"{where} must be a finite number within ±{FLOAT_LIMIT:.6g}"
    hint = "; send a batch as 'instances'" if isinstance(value, list) and not is_batch else ""
    return f"{where} must be a number, got {_json_type(value)}{hint}"


def _row_key(model: type[BaseModel]) -> str:
    return next(k for k in ROW_KEYS if k in model.model_fields)


def _describe(model: type[BaseModel], name: str) -> str:
    return model.model_fields[name].description or name


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__
