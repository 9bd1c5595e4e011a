"""Arguments are checked against the compiled pipeline's declared parameters before any submit."""

from __future__ import annotations

import pytest

from airflow_kfp_provider.pipeline_spec import (
    PipelineSpecError,
    cli_value,
    coerce_params,
    load_pipeline_spec,
    pipeline_name,
    pipeline_parameters,
)


def test_reads_the_interface(tiny_pipeline):
    spec = load_pipeline_spec(tiny_pipeline)
    assert pipeline_name(spec) == "tiny-pipeline"
    params = pipeline_parameters(spec)
    assert {k: v["type"] for k, v in params.items()} == {
        "msg": "STRING",
        "n": "NUMBER_INTEGER",
        "x": "NUMBER_DOUBLE",
        "flag": "BOOLEAN",
        "run_tag": "STRING",
    }


def test_rendered_strings_become_declared_types(tiny_pipeline):
    spec = load_pipeline_spec(tiny_pipeline)
    out = coerce_params(spec, {"msg": "hi", "n": "100", "x": "0.9", "flag": "True", "run_tag": "r"})
    assert out == {"msg": "hi", "n": 100, "x": 0.9, "flag": True, "run_tag": "r"}
    assert coerce_params(spec, {"n": 3.0, "x": 1, "flag": "false"}) == {"n": 3, "x": 1.0, "flag": False}


@pytest.mark.parametrize(
    "params,needle",
    [
        ({"nope": 1}, "has no parameter(s) nope"),
        ({"n": "ten"}, "'n' must be an integer"),
        ({"n": 2.5}, "'n' must be an integer"),
        ({"n": True}, "'n' must be an integer"),
        ({"x": "abc"}, "'x' must be a number"),
        ({"flag": "maybe"}, "'flag' must be a boolean"),
    ],
)
def test_bad_arguments_name_the_parameter(tiny_pipeline, params, needle):
    with pytest.raises(PipelineSpecError, match=None) as err:
        coerce_params(load_pipeline_spec(tiny_pipeline), params)
    assert needle in str(err.value)


def test_missing_or_foreign_file(tmp_path):
    with pytest.raises(PipelineSpecError, match="compiled pipeline not found at .*retrain_pipeline.yaml"):
        load_pipeline_spec(tmp_path / "retrain_pipeline.yaml")
    other = tmp_path / "other.yaml"
    other.write_text("a: 1\n")
    with pytest.raises(PipelineSpecError, match="not a compiled KFP pipeline"):
        load_pipeline_spec(other)


def test_cli_values():
    assert [cli_value(v) for v in (True, False, 3, 0.5, "s", [1], {"a": 1})] == [
        "true",
        "false",
        "3",
        "0.5",
        "s",
        "[1]",
        '{"a": 1}',
    ]
