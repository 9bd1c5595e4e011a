"""Small helpers shared inside the provider (standard library only)."""

from __future__ import annotations

from typing import Any

TRUE = frozenset({"1", "true", "yes", "y", "on"})
FALSE = frozenset({"0", "false", "no", "n", "off"})


def parse_bool(value: Any, name: str = "value", default: bool | None = None) -> bool:
    """The provider's one boolean parser (connection extras, pipeline parameters).

    ``True``/``False`` from a bool or its text (1/true/yes/y/on, 0/false/no/n/off, any case). Empty or
    None gives ``default`` when there is one; anything else raises ValueError naming ``name``.
    """
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
