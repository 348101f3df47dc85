"""The drift agreement rule: one device's verdict never makes an event (unit + property)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleet.ota.drift import AgreementRule, agreeing
from fleet.settings import FleetSettings

RULE = AgreementRule(threshold=0.2, min_devices=3, min_share=0.2)

scores = st.dictionaries(
    st.text(alphabet="abcdefgh", min_size=1, max_size=4),
    st.floats(min_value=0.0, max_value=10.0),
    max_size=40,
)
rules = st.builds(
    AgreementRule,
    threshold=st.floats(min_value=0.01, max_value=5.0),
    min_devices=st.integers(min_value=1, max_value=10),
    min_share=st.floats(min_value=0.01, max_value=1.0),
)


def test_one_forged_device_in_a_group_of_one_raises_nothing() -> None:
    # A single device, however far its counts are from the reference.
    assert agreeing({"forger": 50.0}, population=1, rule=RULE) is None


def test_three_of_ten_devices_agree_and_are_named() -> None:
    scores_ = {"a": 0.9, "b": 0.5, "c": 0.3, "d": 0.1, "e": 0.0}
    assert agreeing(scores_, population=10, rule=RULE) == ["a", "b", "c"]


def test_three_of_twenty_devices_are_too_small_a_share() -> None:
    scores_ = {"a": 0.9, "b": 0.5, "c": 0.3}
    assert agreeing(scores_, population=20, rule=RULE) is None  # 15 % < 20 %
    assert agreeing(scores_, population=15, rule=RULE) == ["a", "b", "c"]  # exactly 20 %


def test_a_score_equal_to_the_threshold_does_not_drift() -> None:
    assert agreeing({"a": 0.2, "b": 0.2, "c": 0.2}, population=3, rule=RULE) is None


@given(scores, st.integers(min_value=0, max_value=100), rules)
def test_an_event_always_has_enough_drifting_devices(
    s: dict[str, float], population: int, rule: AgreementRule
) -> None:
    out = agreeing(s, population=population, rule=rule)
    drifting = sorted(d for d, v in s.items() if v > rule.threshold)
    if out is None:
        # Refused only when the count or the share is short.
        total = max(population, len(s))
        assert len(drifting) < rule.min_devices or len(drifting) < rule.min_share * total - 1e-9
    else:
        assert out == drifting
        assert len(out) >= rule.min_devices
        assert len(out) / max(population, len(s)) >= rule.min_share - 1e-9


@given(scores, st.integers(min_value=0, max_value=100), rules, st.text(min_size=1, max_size=3))
def test_one_device_changing_its_score_changes_the_verdict_only_with_min_devices_1(
    s: dict[str, float], population: int, rule: AgreementRule, forger: str
) -> None:
    # With the others fixed, a single device (any score) can turn "no event" into "event"
    # only when it was the one missing device: never from zero agreeing devices at
    # min_devices >= 2.
    honest = {d: v for d, v in s.items() if d != forger and v <= rule.threshold}
    forged = {**honest, forger: math.inf}
    if rule.min_devices >= 2:
        assert agreeing(forged, population=population, rule=rule) is None


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"min_devices": 0}, "min_devices"),
        ({"min_share": 0.0}, "min_share"),
        ({"min_share": 1.5}, "min_share"),
        ({"threshold": 0.0}, "threshold"),
        ({"threshold": math.nan}, "threshold"),
        ({"min_samples": 0}, "min_samples"),
    ],
)
def test_bad_rules_are_refused_naming_the_setting(changes: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        AgreementRule(**changes)  # type: ignore[arg-type]


def test_the_rule_comes_from_the_fleet_settings_and_their_environment() -> None:
    defaults = FleetSettings.from_env({}).drift_rule()
    assert (defaults.min_devices, defaults.min_share, defaults.threshold) == (3, 0.2, 0.2)
    env = {"FEDFLEET_FLEET_DRIFT_MIN_DEVICES": "5", "FEDFLEET_FLEET_DRIFT_MIN_SHARE": "0.5"}
    rule = FleetSettings.from_env(env).drift_rule()
    assert (rule.min_devices, rule.min_share) == (5, 0.5)
    with pytest.raises(ValueError, match="min_share"):
        FleetSettings.from_env({"FEDFLEET_FLEET_DRIFT_MIN_SHARE": "2"})
