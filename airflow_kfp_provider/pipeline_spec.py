"""Reading a compiled KFP pipeline (IR YAML) without importing kfp, and checking arguments against it.

Airflow hands pipeline parameters around as rendered templates (strings) or JSON values; KFP wants
each parameter in the type the pipeline declares (``NUMBER_INTEGER`` must not arrive as ``"100"`` or
``100.0``). ``coerce_params`` converts what can be converted safely and rejects the rest *before*
anything is submitted, with a message that names the parameter. It is the one place where pipeline
arguments are converted: the operator uses it before submitting, local runners (e.g.
:mod:`airflow_kfp_provider.local_runner`) use it on their ``--param name=value`` text.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from airflow_kfp_provider.utils import parse_bool

#: The compiled pipeline an operator runs when it is given none.
PIPELINE_PACKAGE_ENV = "KFP_PIPELINE_PACKAGE"


class PipelineSpecError(ValueError):
    """The pipeline package is missing or unreadable, or arguments do not fit it."""


def default_pipeline_package() -> str:
    """``$KFP_PIPELINE_PACKAGE``: the compiled pipeline used when an operator names none."""
    env = os.environ.get(PIPELINE_PACKAGE_ENV)
    if not env:
        raise PipelineSpecError(
            f"no compiled pipeline given: set the operator's pipeline_package or ${PIPELINE_PACKAGE_ENV}"
        )
    return env


def load_pipeline_spec(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The PipelineSpec document of a compiled pipeline YAML (the one holding ``root``)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise PipelineSpecError(
            f"compiled pipeline not found at {path}: compile the pipeline (kfp.compiler.Compiler) or point "
            f"the operator's pipeline_package (or ${PIPELINE_PACKAGE_ENV}) at an existing compiled pipeline YAML"
        )
    try:
        docs = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    except (OSError, yaml.YAMLError) as exc:
        raise PipelineSpecError(f"cannot read compiled pipeline {path}: {exc}; recompile it") from exc
    for doc in docs:
        if isinstance(doc, dict) and "root" in doc:
            return doc
    raise PipelineSpecError(
        f"{path} is not a compiled KFP pipeline (no PipelineSpec document with a 'root'); "
        "compile it with kfp.compiler.Compiler"
    )


def pipeline_name(spec: dict[str, Any]) -> str:
    return str((spec.get("pipelineInfo") or {}).get("name") or "")


def pipeline_parameters(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{name: {"type": "STRING"|..., "default": value or None, "optional": bool}}``."""
    params = ((spec.get("root") or {}).get("inputDefinitions") or {}).get("parameters") or {}
    out = {}
    for name, info in params.items():
        info = info or {}
        out[name] = {
            "type": info.get("parameterType", "STRING"),
            "default": info.get("defaultValue"),
            "optional": bool(info.get("isOptional", "defaultValue" in info)),
        }
    return out


def _coerce(name: str, ptype: str, value: Any) -> Any:
    def bad(expected: str) -> PipelineSpecError:
        return PipelineSpecError(
            f"pipeline parameter {name!r} must be {expected}, got {value!r} ({type(value).__name__})"
        )

    if ptype == "STRING":
        if isinstance(value, (dict, list)):
            return json.dumps(value)
        return "" if value is None else str(value)
    if ptype == "NUMBER_INTEGER":
        if isinstance(value, bool):
            raise bad("an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            text = value.strip()
            try:
                return int(text)
            except ValueError:
                try:
                    number = float(text)
                except ValueError:
                    raise bad("an integer") from None
                if number.is_integer():
                    return int(number)
        raise bad("an integer")
    if ptype == "NUMBER_DOUBLE":
        if isinstance(value, bool):
            raise bad("a number")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                raise bad("a number") from None
        raise bad("a number")
    if ptype == "BOOLEAN":
        if isinstance(value, (bool, str)):
            try:
                return parse_bool(value, name)
            except ValueError:
                pass
        raise bad("a boolean (true or false)")
    if ptype in ("LIST", "STRUCT"):
        expected = list if ptype == "LIST" else dict
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise bad(f"a JSON {'list' if ptype == 'LIST' else 'object'}") from None
        if isinstance(value, expected):
            return value
        raise bad(f"a JSON {'list' if ptype == 'LIST' else 'object'}")
    return value  # a type this code does not know: pass it through unchanged


def coerce_params(spec: dict[str, Any], params: dict[str, Any] | None) -> dict[str, Any]:
    """Check params against the pipeline's declared inputs and convert them to the declared types."""
    declared = pipeline_parameters(spec)
    params = dict(params or {})
    unknown = sorted(set(params) - set(declared))
    if unknown:
        raise PipelineSpecError(
            f"pipeline {pipeline_name(spec)!r} has no parameter(s) {', '.join(unknown)}; "
            f"it takes: {', '.join(sorted(declared)) or '(none)'}"
        )
    missing = sorted(n for n, d in declared.items() if not d["optional"] and n not in params)
    if missing:
        raise PipelineSpecError(
            f"pipeline {pipeline_name(spec)!r} needs parameter(s) {', '.join(missing)} (they have no default)"
        )
    return {name: _coerce(name, declared[name]["type"], value) for name, value in params.items()}


def cli_value(value: Any) -> str:
    """How a (coerced) value is written in ``--param name=value`` for the local runner."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)
