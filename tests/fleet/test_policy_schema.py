"""The promotion-policy format (fleet/policy.py): what it accepts, what it refuses, and
that each refusal is one line naming the key."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleet.policy import Policy, PolicyError, parse_policy, policy_from_document

GOOD = """
group = "ward-3"
targets = ["rpi5", "cpu-x86"]

[gates]
min_accuracy = 0.9
max_epsilon = 8.0
max_fairness_gap = 0.1
max_bundle_accuracy_drop_points = 1.0

[canary]
waves = [1, 10, 50, 100]
soak_s = 600
max_install_failure_rate = 0.1
max_latency_ratio = 1.5
max_accuracy_drop_points = 2.0
max_error_rate = 0.01

[signing]
key = "/etc/fedfleet/ward-3.key"

[retrain]
enabled = true
cooldown_s = 3600
max_runs_per_day = 3
"""


def _with(section: str, key: str, value: str) -> str:
    """GOOD with ``key`` of ``[section]`` set to the TOML ``value``."""
    lines = GOOD.splitlines()
    current = ""
    out = []
    for line in lines:
        if line.startswith("["):
            current = line.strip("[]")
        if current == section and line.startswith(f"{key} ="):
            line = f"{key} = {value}"
        out.append(line)
    return "\n".join(out)


def test_a_full_policy_parses_into_its_parts():
    # Execute
    policy = parse_policy(GOOD, source="p.toml")
    # Assert
    assert policy.group == "ward-3" and policy.targets == ("rpi5", "cpu-x86")
    assert policy.gates.min_accuracy == 0.9 and policy.gates.max_epsilon == 8.0
    assert policy.canary.waves == (1, 10, 50, 100) and policy.canary.soak_s == 600.0
    assert policy.signing.mode == "key" and policy.signing.key == "/etc/fedfleet/ward-3.key"
    assert policy.retrain.enabled and policy.retrain.max_runs_per_day == 3


def test_the_document_round_trips():
    policy = parse_policy(GOOD)
    assert policy_from_document(policy.to_document()) == policy


def test_defaults_fill_optional_tables():
    text = 'group = "g"\ntargets = ["rpi5"]\n[gates]\nmin_accuracy = 0.5\n[signing]\napproval = "operator"\n'
    policy = parse_policy(text)
    assert policy.signing.mode == "approval"
    assert policy.gates.max_epsilon is None and policy.gates.max_fairness_gap is None
    assert policy.canary.waves[-1] == 100 and not policy.retrain.enabled
    assert "max_epsilon" not in policy.to_document()["gates"]


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("gates", "min_accuracy", "1.5", "min_accuracy = 1.5 is out of range"),
        ("gates", "max_epsilon", "-1.0", "max_epsilon = -1.0 is out of range"),
        ("gates", "max_epsilon", "0", "max_epsilon = 0 is out of range"),
        ("gates", "max_fairness_gap", "nan", "max_fairness_gap = nan is out of range"),
        ("gates", "max_bundle_accuracy_drop_points", "101", "out of range"),
        ("canary", "waves", "[1, 50, 20]", "must increase and end at 100"),
        ("canary", "waves", "[10, 50]", "must increase and end at 100"),
        ("canary", "waves", "[0, 100]", "each wave is a percentage in 1..100"),
        ("canary", "waves", '["a"]', "whole percentages"),
        ("canary", "max_latency_ratio", "0.5", "max_latency_ratio = 0.5 is out of range"),
        ("canary", "soak_s", "-1", "soak_s = -1 is out of range"),
        ("retrain", "max_runs_per_day", "-1", "must be a whole number in 0..24"),
        ("retrain", "enabled", '"yes"', "must be true or false"),
        ("signing", "key", '"relative/ward.key"', "must be an absolute path"),
    ],
)
def test_out_of_range_values_are_refused_with_one_line_naming_the_key(
    section, key, value, expected
):
    with pytest.raises(PolicyError) as err:
        parse_policy(_with(section, key, value), source="p.toml")
    message = str(err.value)
    assert expected in message and f"[{section}]" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("group = ", "is not valid TOML"),
        (GOOD.replace('group = "ward-3"', 'group = "Ward 3"'), "must name a device group"),
        (GOOD.replace('targets = ["rpi5", "cpu-x86"]', "targets = []"), "non-empty list"),
        (GOOD.replace('"cpu-x86"]', '"rpi5"]'), "names a target twice"),
        (GOOD.replace("min_accuracy = 0.9\n", ""), "min_accuracy is missing"),
        (GOOD.replace("[signing]", '[signing]\napproval = "operator"'), "exactly one of key"),
        (GOOD.replace("[retrain]", "[retrain]\ncooldown = 5"), "unknown key 'cooldown'"),
        (GOOD + "\n[extra]\n", "unknown key 'extra'"),
    ],
)
def test_malformed_files_are_refused_with_one_line(text, expected):
    with pytest.raises(PolicyError) as err:
        parse_policy(text, source="p.toml")
    assert expected in str(err.value) and "\n" not in str(err.value)


finite = st.floats(allow_nan=True, allow_infinity=True, width=64)


@given(value=finite)
def test_min_accuracy_is_accepted_exactly_in_the_unit_interval(value: float) -> None:
    text = _with("gates", "min_accuracy", _toml_float(value))
    if math.isfinite(value) and 0.0 <= value <= 1.0:
        assert parse_policy(text).gates.min_accuracy == value
    else:
        with pytest.raises(PolicyError, match="min_accuracy"):
            parse_policy(text)


@given(value=finite)
def test_epsilon_is_accepted_exactly_when_positive_and_finite(value: float) -> None:
    text = _with("gates", "max_epsilon", _toml_float(value))
    if math.isfinite(value) and 0.0 < value <= 1e6:
        assert parse_policy(text).gates.max_epsilon == value
    else:
        with pytest.raises(PolicyError, match="max_epsilon"):
            parse_policy(text)


@given(waves=st.lists(st.integers(min_value=-5, max_value=120), min_size=1, max_size=25))
def test_waves_are_accepted_exactly_when_increasing_percentages_ending_at_100(
    waves: list[int],
) -> None:
    text = _with("canary", "waves", str(waves))
    valid = (
        len(waves) <= 20
        and all(1 <= w <= 100 for w in waves)
        and all(b > a for a, b in itertools.pairwise(waves))
        and waves[-1] == 100
    )
    if valid:
        assert parse_policy(text).canary.waves == tuple(waves)
    else:
        with pytest.raises(PolicyError, match="waves"):
            parse_policy(text)


@given(rate=finite)
def test_failure_and_error_rates_are_fractions(rate: float) -> None:
    for key in ("max_install_failure_rate", "max_error_rate"):
        text = _with("canary", key, _toml_float(rate))
        if math.isfinite(rate) and 0.0 <= rate <= 1.0:
            assert isinstance(parse_policy(text), Policy)
        else:
            with pytest.raises(PolicyError, match=key):
                parse_policy(text)


def _toml_float(value: float) -> str:
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return repr(value)


maybe = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True))


@given(accuracy=maybe, epsilon=maybe, gap=maybe)
def test_gates_fail_exactly_the_runs_outside_them(accuracy, epsilon, gap) -> None:
    # Oracle: the rule as docs/policies.md states it, written independently.
    gates = parse_policy(GOOD).gates  # accuracy >= 0.9, epsilon <= 8, gap <= 0.1
    reasons = gates.failures(accuracy=accuracy, epsilon=epsilon, fairness_gap=gap)
    expected = [
        accuracy is None or math.isnan(accuracy) or accuracy < 0.9,
        epsilon is None or math.isnan(epsilon) or epsilon > 8.0,
        gap is not None and (math.isnan(gap) or gap > 0.1),
    ]
    assert [
        any(r.startswith(word) for r in reasons) for word in ("accuracy", "epsilon", "fairness")
    ] == expected
    assert all("\n" not in r for r in reasons)


def test_gates_without_privacy_or_fairness_limits_ignore_them() -> None:
    text = 'group = "g"\ntargets = ["rpi5"]\n[gates]\nmin_accuracy = 0.5\n[signing]\napproval = "operator"\n'
    gates = parse_policy(text).gates
    assert gates.failures(accuracy=0.5, epsilon=None, fairness_gap=0.9) == []
    assert gates.failures(accuracy=None, epsilon=None, fairness_gap=None) == [
        "accuracy (not reported) is below the gate 0.5"
    ]
