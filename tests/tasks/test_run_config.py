"""Run-config value parsing shared by strategies, selection and secure aggregation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tasks.run_config import as_bool, as_number


@pytest.mark.parametrize(
    ("raw", "target", "expected"),
    [("3", int, 3), (3.0, int, 3), ("0.5", float, 0.5), (2, float, 2.0), ("1e3", int, 1000)],
)
def test_numbers_from_any_run_config_spelling(raw, target, expected):
    value = as_number("k", raw, target)
    assert value == expected
    assert type(value) is target


@pytest.mark.parametrize(
    ("raw", "target", "message"),
    [
        ("lots", float, "run config k='lots' must be a number"),
        (True, float, "run config k=True must be a number"),
        ("2.5", int, "run config k='2.5' must be a whole number"),
        (None, int, "must be a whole number"),
        ("inf", int, "must be a whole number"),
    ],
)
def test_bad_numbers_name_key_and_value(raw, target, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        as_number("k", raw, target)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (True, True),
        ("yes", True),
        (" On ", True),
        (1, True),
        ("false", False),
        ("", False),
        (0, False),
    ],
)
def test_booleans(raw, expected):
    assert as_bool("k", raw) is expected


@pytest.mark.parametrize("raw", ["maybe", 2, 0.5, None])
def test_bad_booleans(raw):
    with pytest.raises(ValueError, match="must be true or false"):
        as_bool("k", raw)


@given(st.integers(min_value=-(2**52), max_value=2**52))
def test_integers_round_trip_through_text(n):
    assert as_number("k", str(n), int) == n
    assert as_number("k", float(n), int) == n
