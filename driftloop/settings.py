"""The one parser for settings given as text (environment variables, pipeline parameters, query
strings): every part accepts the same spellings and names what was wrong.

The provider package (`airflow_kfp_provider.utils.parse_bool`) has its own copy because it is
distributed on its own and imports nothing of this project; tests/test_settings.py holds the two to
the same spellings and messages."""

from __future__ import annotations

from typing import Any

TRUE = frozenset({"1", "true", "yes", "y", "on"})
FALSE = frozenset({"0", "false", "no", "n", "off"})


def parse_bool(value: Any, name: str = "value", default: bool | None = None) -> bool:
    """`True`/`False` from a bool or its text (case and surrounding blanks ignored: 1/true/yes/y/on,
    0/false/no/n/off). Empty or None gives `default` when there is one. Anything else raises
    ValueError naming `name` and the accepted spellings."""
    if isinstance(value, bool):
        return value
    text = "" if value is None else str(value).strip().lower()
    if text in TRUE:
        return True
    if text in FALSE:
        return False
    if not text and default is not None:
        return default
    raise ValueError(f"{name} must be a boolean (one of {', '.join(sorted(TRUE | FALSE))}), got {value!r}")
