"""The project's boolean parser and the provider's copy (the provider imports nothing of the project)
accept the same spellings and refuse the same values with the same message."""

from __future__ import annotations

import pytest

from airflow_kfp_provider import utils as provider
from driftloop import settings

VALUES = [True, False, None, "", " ", "1", "0", "TRUE", " yes ", "Y", "on", "OFF", "n", "maybe", "2", 1, 0, 2.5]


def _outcome(parse, value, default):
    try:
        return parse(value, "flag", default)
    except ValueError as exc:
        return str(exc)


@pytest.mark.parametrize("default", [None, True, False])
def test_both_parsers_agree(default):
    assert (settings.TRUE, settings.FALSE) == (provider.TRUE, provider.FALSE)
    for value in VALUES:
        assert _outcome(settings.parse_bool, value, default) == _outcome(provider.parse_bool, value, default), value


def test_a_bad_value_names_the_setting():
    with pytest.raises(ValueError, match=r"SERVING_X must be a boolean .* got 'maybe'"):
        settings.parse_bool("maybe", "SERVING_X")
    assert settings.parse_bool(" On ", "x") is True and settings.parse_bool("", "x", default=False) is False
