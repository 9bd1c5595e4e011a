"""Input parsing and validation (no Flask, no model)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from serving.inputs import InputError, check_content_type, parse_feedback, parse_json_object, parse_rows


def rows(body, n=4, max_batch=10):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parse_rows(parse_json_object(raw), n, max_batch)


def test_one_row_and_a_batch():
    X, batch = rows({"features": [5.1, 3.5, 1, 0.2]})
    assert not batch and X.shape == (1, 4) and X.dtype == np.float64
    X, batch = rows({"instances": [[1, 2, 3, 4], [5, 6, 7, 8.5]]})
    assert batch and X.shape == (2, 4)


@pytest.mark.parametrize(
    "body, fragment",
    [
        (b"{not json", "malformed JSON"),
        (b"", "empty"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"features": [NaN, 1, 2, 3]}', "NaN"),
        (b'{"features": [Infinity, 1, 2, 3]}', "Infinity"),
        (b'{"features": [1e999, 1, 2, 3]}', "finite"),
        (b'{"features": [1, 2, 3, 4], "features2": 1}', "unknown field"),
        (b"{}", "missing field"),
        (b'{"features": [1, 2, 3]}', "has 3 values, the model expects 4"),
        (b'{"features": [1, 2, 3, "4"]}', "features[3] must be a number, got string"),
        (b'{"features": [1, 2, 3, true]}', "got boolean"),
        (b'{"features": [1, 2, 3, null]}', "got null"),
        (b'{"features": [1, 2, 3, [4]]}', "got array"),
        (b'{"features": "1,2,3,4"}', "must be an array"),
        (b'{"instances": []}', "empty"),
        (b'{"instances": [[1, 2, 3, 4], [1, 2]]}', "instances[1] has 2 values"),
        (b'{"instances": [1, 2, 3, 4]}', "instances[0] must be an array"),
        (b'{"features": [1, 2, 3, 4], "instances": [[1, 2, 3, 4]]}', "not both"),
        (b"\xff\xfe", "UTF-8"),
    ],
)
def test_bad_bodies_name_the_problem(body, fragment):
    with pytest.raises(InputError) as err:
        rows(body)
    assert err.value.status == 400
    assert fragment in err.value.message


def test_batch_over_the_limit_is_rejected():
    with pytest.raises(InputError) as err:
        rows({"instances": [[1, 2, 3, 4]] * 11})
    assert err.value.status == 400 and "limit is 10" in err.value.message


def test_huge_integer_is_rejected():
    with pytest.raises(InputError):
        rows(b'{"features": [1' + b"0" * 400 + b", 2, 3, 4]}")


@pytest.mark.parametrize(
    "ctype, ok",
    [
        ("application/json", True),
        ("application/json; charset=utf-8", True),
        ("application/vnd.api+json", True),
        ("text/plain", False),
        (None, False),
        ("application/x-www-form-urlencoded", False),
    ],
)
def test_content_type(ctype, ok):
    if ok:
        check_content_type(ctype)
    else:
        with pytest.raises(InputError) as err:
            check_content_type(ctype)
        assert err.value.status == 415


def test_feedback_shapes():
    X, labels = parse_feedback({"features": [1, 2, 3, 4], "label": 2}, 4, 10)
    assert X.shape == (1, 4) and labels == [2]
    X, labels = parse_feedback({"instances": [[1, 2, 3, 4], [4, 3, 2, 1]], "labels": [0, "setosa"]}, 4, 10)
    assert X.shape == (2, 4) and labels == [0, "setosa"]
    for bad, fragment in [
        ({"features": [1, 2, 3, 4]}, "label"),
        ({"features": [1, 2, 3, 4], "label": True}, "got boolean"),
        ({"features": [1, 2, 3, 4], "label": 1.5}, "got number"),
        ({"features": [1, 2, 3, 4], "label": None}, "got null"),
        ({"instances": [[1, 2, 3, 4]], "labels": [1, 2]}, "2 values for 1 rows"),
        ({"instances": [[1, 2, 3, 4]]}, "labels"),
        ({"features": [1, 2, 3, 4], "labels": [1]}, "not 'labels'"),
    ]:
        with pytest.raises(InputError) as err:
            parse_feedback(bad, 4, 10)
        assert fragment in err.value.message, (bad, err.value.message)


def test_values_beyond_float32_are_rejected():
    """Tree models compute in float32: 1e39 would become inf there (and sklearn would raise)."""
    X, _ = rows({"features": [3.0e38, -3.0e38, 0, 1]})
    assert X[0, 0] == 3.0e38
    with pytest.raises(InputError, match="within"):
        rows({"features": [1e39, 1, 2, 3]})
    with pytest.raises(InputError, match="within"):
        rows({"features": [-(10**40), 1, 2, 3]})
