"""Parsing and validation of request bodies. No Flask here: input is bytes, output a numpy array.

Every problem raises `InputError` with a message that names it and the HTTP status to answer with.
Valid numbers are JSON numbers only: booleans, strings, null, NaN/Infinity (which Python's json
module would otherwise accept), nested lists and magnitudes beyond the float32 range (tree models
compute in float32) are rejected.
"""
from __future__ import annotations

import json
import math
import re
from typing import Any, Sequence

import numpy as np


# Tree models (sklearn and ONNX) compute in float32: larger magnitudes would become inf there.
FLOAT_LIMIT = float(np.finfo(np.float32).max)


class InputError(ValueError):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message = message
        self.status = status


def _reject_constant(name: str) -> Any:
    raise InputError(f"invalid JSON value {name}: only finite numbers are accepted")


def check_content_type(content_type: str | None) -> None:
    """Accept application/json (any parameters, e.g. charset) and application/*+json."""
    if not content_type:
        raise InputError("Content-Type must be application/json (none was given)", 415)
    mime = content_type.split(";", 1)[0].strip().lower()
    if mime == "application/json" or (mime.startswith("application/") and mime.endswith("+json")):
        return
    raise InputError(f"Content-Type must be application/json, got {mime!r}", 415)


def parse_json_object(body: bytes) -> dict:
    """Decode a JSON object; reject anything else with a message naming the problem."""
    if not body:
        raise InputError("request body is empty: expected a JSON object")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError("request body is not valid UTF-8") from None
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except InputError:
        raise
    except (ValueError, RecursionError) as exc:
        raise InputError(f"malformed JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InputError(f"request body must be a JSON object, got {_json_type(data)}")
    return data


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


def _row(values: Any, n_features: int, where: str) -> list[float]:
    if not isinstance(values, list):
        raise InputError(f"{where} must be an array of {n_features} numbers, got {_json_type(values)}")
    out = []
    for i, v in enumerate(values):
        t = type(v)
        if t is float or t is int:
            try:
                f = float(v)
            except OverflowError:
                f = math.inf
            if not -FLOAT_LIMIT <= f <= FLOAT_LIMIT:  # also catches inf (1e999) and nan
                raise InputError(f"{where}[{i}] must be a finite number within ±{FLOAT_LIMIT:.6g}")
            out.append(f)
        else:
            raise InputError(f"{where}[{i}] must be a number, got {_json_type(v)}"
                             + ("; send a batch as 'instances'" if isinstance(v, list) and where == "features" else ""))
    if len(out) != n_features:
        raise InputError(f"{where} has {len(out)} values, the model expects {n_features}")
    return out


def _check_keys(data: dict, allowed: Sequence[str], required_one_of: Sequence[str]) -> str:
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise InputError(f"unknown field(s) {', '.join(unknown)}: expected {' or '.join(required_one_of)}")
    present = [k for k in required_one_of if k in data]
    if not present:
        raise InputError(f"missing field: the body needs {' or '.join(repr(k) for k in required_one_of)}")
    if len(present) > 1:
        raise InputError(f"give either {' or '.join(repr(k) for k in required_one_of)}, not both")
    return present[0]


def parse_rows(data: dict, n_features: int, max_batch: int, *, extra_allowed: Sequence[str] = ()) -> tuple[np.ndarray, bool]:
    """`{"features": [..]}` (one row) or `{"instances": [[..], ..]}` -> (float64 array (n, k), is_batch)."""
    key = _check_keys(data, ("features", "instances", *extra_allowed), ("features", "instances"))
    if key == "features":
        row = _row(data["features"], n_features, "features")
        return np.array([row], dtype=np.float64), False
    instances = data["instances"]
    if not isinstance(instances, list):
        raise InputError(f"instances must be an array of rows, got {_json_type(instances)}")
    if not instances:
        raise InputError("instances is empty: send at least one row")
    if len(instances) > max_batch:
        raise InputError(f"instances has {len(instances)} rows, the limit is {max_batch} (SERVING_MAX_BATCH)")
    rows = [_row(r, n_features, f"instances[{i}]") for i, r in enumerate(instances)]
    return np.array(rows, dtype=np.float64), True


def _label(value: Any, where: str) -> int | str:
    if type(value) is int:
        return value
    if isinstance(value, str) and value and len(value) <= 200:
        return value
    if isinstance(value, str):
        raise InputError(f"{where} must be a non-empty string of at most 200 characters or an integer")
    raise InputError(f"{where} must be an integer (or a class name string), got {_json_type(value)}")


SOURCE_MAX_LENGTH = 64
# letters, digits and ' ._:/@+-', starting with a letter or digit: short, printable, one line, and
# never a spreadsheet formula when the provenance export is opened as CSV (no leading = + - @)
SOURCE_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._:/@+-]*")
SOURCE_PATTERN_JSON = "^[A-Za-z0-9][A-Za-z0-9 ._:/@+-]*$"  # the same rule for the OpenAPI document


def parse_feedback_source(data: dict) -> str | None:
    """The optional caller-given `source` of a feedback body (who or what labelled the rows)."""
    if "source" not in data:
        return None
    value = data["source"]
    if not isinstance(value, str):
        raise InputError(f"source must be a string, got {_json_type(value)}")
    if not 1 <= len(value) <= SOURCE_MAX_LENGTH or SOURCE_PATTERN.fullmatch(value) is None:
        raise InputError(f"source must be 1-{SOURCE_MAX_LENGTH} characters: letters, digits and ' ._:/@+-', "
                         "starting with a letter or digit")
    return value


def parse_feedback(data: dict, n_features: int, max_batch: int) -> tuple[np.ndarray, list[int | str]]:
    """`{"features": [..], "label": y}` or `{"instances": [[..]], "labels": [y, ..]}`, each with an
    optional `"source": "..."` (read by `parse_feedback_source`)."""
    key = _check_keys(data, ("features", "instances", "label", "labels", "source"), ("features", "instances"))
    if key == "features":
        X, _ = parse_rows({"features": data["features"]}, n_features, max_batch)
        if "labels" in data:
            raise InputError("with 'features' give 'label' (one value), not 'labels'")
        if "label" not in data:
            raise InputError("missing field: 'label' (the true label of the row)")
        return X, [_label(data["label"], "label")]
    X, _ = parse_rows({"instances": data["instances"]}, n_features, max_batch)
    if "label" in data:
        raise InputError("with 'instances' give 'labels' (one per row), not 'label'")
    if "labels" not in data:
        raise InputError("missing field: 'labels' (one true label per row)")
    labels = data["labels"]
    if not isinstance(labels, list):
        raise InputError(f"labels must be an array, got {_json_type(labels)}")
    if len(labels) != len(X):
        raise InputError(f"labels has {len(labels)} values for {len(X)} rows")
    return X, [_label(v, f"labels[{i}]") for i, v in enumerate(labels)]
