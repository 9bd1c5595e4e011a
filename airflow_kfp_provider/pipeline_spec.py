"""Reading a compiled KFP pipeline (IR YAML) without importing kfp, and checking arguments against it.

Airflow hands pipeline parameters around as rendered templates (strings) or JSON values; KFP wants
each parameter in the type the pipeline declares (``NUMBER_INTEGER`` must not arrive as ``"100"`` or
``100.0``). ``coerce_params`` converts what can be converted safely and rejects the rest *before*
anything is submitted, with a message that names the parameter.
"""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

#: Where the project's compiled retrain pipeline lives (``make compile`` writes it).
DEFAULT_PIPELINE_FILE = "retrain_pipeline.yaml"
PIPELINE_PACKAGE_ENV = "KFP_PIPELINE_PACKAGE"


class PipelineSpecError(ValueError):
    """The pipeline package is missing or unreadable, or arguments do not fit it."""


def default_pipeline_package() -> str:
    """``$KFP_PIPELINE_PACKAGE``, else ``kfp_components/retrain_pipeline.yaml`` of the installed project.

    Uses importlib's finder only (nothing is imported), so it is cheap and safe at run time.
    """
    env = os.environ.get(PIPELINE_PACKAGE_ENV)
    if env:
        return env
    spec = importlib.util.find_spec("kfp_components")
    if spec is not None and spec.submodule_search_locations:
        return str(Path(list(spec.submodule_search_locations)[0]) / DEFAULT_PIPELINE_FILE)
    return str(Path("kfp_components") / DEFAULT_PIPELINE_FILE)


def load_pipeline_spec(path: str | os.PathLike) -> dict:
    """The PipelineSpec document of a compiled pipeline YAML (the one holding ``root``)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise PipelineSpecError(
            f"compiled pipeline not found at {path}: run `make compile` (it writes "
            f"kfp_components/{DEFAULT_PIPELINE_FILE}) or point the operator's pipeline_package "
            f"(or ${PIPELINE_PACKAGE_ENV}) at an existing compiled pipeline YAML"
        )
    try:
        docs = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    except (OSError, yaml.YAMLError) as exc:
        raise PipelineSpecError(f"cannot read compiled pipeline {path}: {exc}; recompile it with `make compile`") from exc
    for doc in docs:
        if isinstance(doc, dict) and "root" in doc:
            return doc
    raise PipelineSpecError(
        f"{path} is not a compiled KFP pipeline (no PipelineSpec document with a 'root'); "
        "compile it with kfp.compiler.Compiler (`make compile`)"
    )


def pipeline_name(spec: dict) -> str:
    return str((spec.get("pipelineInfo") or {}).get("name") or "")


def pipeline_parameters(spec: dict) -> dict[str, dict]:
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


_TRUE = {"true", "1", "yes", "y", "on"}
_FALSE = {"false", "0", "no", "n", "off"}


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
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
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


def coerce_params(spec: dict, params: dict | None) -> dict:
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
