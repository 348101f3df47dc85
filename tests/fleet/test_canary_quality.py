"""The canary comparator (fleet/ota/canary_quality.py): unit and property tests."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.ota.canary_quality import (
    _CHECKS,
    DeviceQuality,
    QualityThresholds,
    _pooled,
    _predictions_vs,
    compare,
    total_variation,
    wilson_lower,
)

ALL = QualityThresholds(
    max_accuracy_drop_points=2.0,
    max_latency_ratio=1.5,
    max_error_rate=0.01,
    max_prediction_shift=0.25,
)


def _devices(
    rng: np.random.Generator,
    n: int,
    *,
    accuracy: float,
    labelled: int,
    latency: float = 2.0,
    prefix: str = "d",
) -> list[DeviceQuality]:
    out = []
    for i in range(n):
        predictions = rng.multinomial(labelled, [0.1] * 10)
        out.append(
            DeviceQuality(
                device_id=f"{prefix}{i}",
                inferences=labelled,
                latency_p95_ms=latency * float(rng.uniform(0.95, 1.05)),
                labelled=labelled,
                correct=int(rng.binomial(labelled, accuracy)),
                predictions={str(c): int(k) for c, k in enumerate(predictions)},
            )
        )
    return out


def test_a_model_3_points_worse_regresses_and_the_same_model_does_not() -> None:
    # Prepare: 10 canary devices, 100 baseline devices, 1,000 labels each
    rng = np.random.default_rng(7)
    baseline = _devices(rng, 100, accuracy=0.95, labelled=1000, prefix="b")
    worse = _devices(rng, 10, accuracy=0.92, labelled=1000)
    same = _devices(rng, 10, accuracy=0.95, labelled=1000)

    # Execute
    bad, good = compare(worse, baseline, ALL), compare(same, baseline, ALL)

    # Assert
    assert bad.regressed and "accuracy" in bad.reason and "points lower" in bad.reason
    assert not good.regressed and good.measured and good.reason == ""


def test_a_model_2x_slower_regresses_on_latency_only() -> None:
    rng = np.random.default_rng(8)
    baseline = _devices(rng, 50, accuracy=0.95, labelled=500, prefix="b")
    slow = _devices(rng, 5, accuracy=0.95, labelled=500, latency=4.0)

    verdict = compare(slow, baseline, ALL)

    assert [f.signal for f in verdict.findings if f.regressed] == ["latency"]
    assert "2.0" in verdict.reason or "1.9" in verdict.reason


def test_too_little_evidence_is_not_measured_never_a_regression() -> None:
    # Prepare: a terrible canary on one device, and one with 50 labels in all
    rng = np.random.default_rng(9)
    baseline = _devices(rng, 20, accuracy=0.95, labelled=1000, prefix="b")
    one = _devices(rng, 1, accuracy=0.10, labelled=5000, latency=50.0)
    few = _devices(rng, 5, accuracy=0.10, labelled=10)

    # Execute / Assert
    for canary in (one, few):
        verdict = compare(canary, baseline, ALL)
        assert not verdict.regressed
    assert not compare(few, baseline, ALL).measured


def test_one_lying_baseline_device_cannot_make_a_good_canary_fail() -> None:
    # Prepare: the honest sides are equal; one baseline device claims 1e6 perfect labels
    # at 0.01 ms, and one canary device claims a million errors.
    rng = np.random.default_rng(10)
    canary = _devices(rng, 3, accuracy=0.95, labelled=1000)
    baseline = _devices(rng, 3, accuracy=0.95, labelled=1000, prefix="b")
    liar = DeviceQuality(
        device_id="liar", inferences=10**6, latency_p95_ms=0.01, labelled=10**6, correct=10**6
    )
    lying_canary = DeviceQuality(device_id="c-liar", inferences=10, errors=10**6)

    # Execute
    verdict = compare([*canary, lying_canary], [*baseline, liar], ALL)

    # Assert: without leave-one-out each lie alone would have aborted
    assert not verdict.regressed, verdict.reason
    pooled_only = compare(canary, [*baseline, liar], ALL).findings
    assert any(f.value is not None and f.value > 2 for f in pooled_only if f.signal == "accuracy")


def test_the_same_accuracy_rarely_aborts_over_many_trials() -> None:
    # 300 trials where both sides have the same true accuracy (0.9): a false abort
    # needs the drop's 99 % lower bound above 2 points.
    rng = np.random.default_rng(11)
    aborts = 0
    for _ in range(300):
        baseline = _devices(rng, 10, accuracy=0.9, labelled=300, prefix="b")
        canary = _devices(rng, 3, accuracy=0.9, labelled=300)
        aborts += compare(
            canary, baseline, QualityThresholds(max_accuracy_drop_points=0.0)
        ).regressed
    assert aborts <= 6  # 1 % expected at a 0-point limit; 2 points leaves none


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_accuracy_drop_points": -1.0}, "max_accuracy_drop_points must be in 0..100"),
        ({"max_latency_ratio": 0.5}, "max_latency_ratio must be in 1..1000"),
        ({"max_error_rate": 2.0}, "max_error_rate must be in 0..1"),
        ({"max_prediction_shift": float("nan")}, "max_prediction_shift must be in 0..1"),
        ({"min_devices": 1}, "one device never decides"),
    ],
)
def test_bad_thresholds_are_refused_in_one_line(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        QualityThresholds(**kwargs)  # type: ignore[arg-type]


# --- properties ---------------------------------------------------------------------

counts = st.integers(0, 10_000)


@st.composite
def device(draw: st.DrawFn, prefix: str = "d") -> DeviceQuality:
    labelled = draw(counts)
    return DeviceQuality(
        device_id=f"{prefix}{draw(st.integers(0, 10**9))}",
        inferences=draw(counts),
        errors=draw(st.integers(0, 500)),
        latency_p95_ms=draw(st.floats(0.0, 100.0)),
        labelled=labelled,
        correct=draw(st.integers(0, labelled)),
        predictions=draw(st.dictionaries(st.sampled_from("0123"), counts, max_size=4)),
    )


sides = st.lists(device(), max_size=6)


@settings(max_examples=150, deadline=None)
@given(canary=sides, baseline=st.lists(device("b"), max_size=6))
def test_a_regression_holds_with_any_one_device_left_out(
    canary: list[DeviceQuality], baseline: list[DeviceQuality]
) -> None:
    # The pooled check of each signal still regresses on every set missing one device.
    verdict = compare(canary, baseline, ALL)
    for finding in (f for f in verdict.findings if f.regressed):
        check = _CHECKS[finding.signal]
        for i in range(len(canary)):
            rest = _pooled([*canary[:i], *canary[i + 1 :]])
            assert check(rest, _pooled(baseline), ALL, finding.limit, ALL.min_devices - 1)[1]
        for i in range(len(baseline)):
            rest = _pooled([*baseline[:i], *baseline[i + 1 :]])
            assert check(_pooled(canary), rest, ALL, finding.limit, ALL.min_devices - 1)[1]


@settings(max_examples=100, deadline=None)
@given(st.lists(device(), max_size=6))
def test_a_canary_equal_to_its_baseline_never_regresses(devices: list[DeviceQuality]) -> None:
    # The same reports on both sides (as another device each): no signal can regress
    # (an error rate over the limit is absolute, so errors are left out here).
    clean = [DeviceQuality(**{**_fields(d), "errors": 0}) for d in devices]
    twins = [DeviceQuality(**{**_fields(d), "device_id": "b" + d.device_id}) for d in clean]
    assert not compare(clean, twins, ALL).regressed


@settings(max_examples=100, deadline=None)
@given(device(), sides, st.lists(device("b"), max_size=6))
def test_a_single_canary_device_never_aborts(
    one: DeviceQuality, _unused: list[DeviceQuality], baseline: list[DeviceQuality]
) -> None:
    assert not compare([one], baseline, ALL).regressed


@given(st.integers(0, 1000), st.integers(0, 1000))
def test_wilson_lower_is_a_lower_bound(successes: int, extra: int) -> None:
    trials = successes + extra
    lower = wilson_lower(successes, trials, 2.326)
    assert 0.0 <= lower <= (successes / trials if trials else 0.0) + 1e-12


@given(
    st.dictionaries(st.sampled_from("abc"), counts, max_size=3),
    st.dictionaries(st.sampled_from("abc"), counts, max_size=3),
)
def test_total_variation_is_a_bounded_symmetric_distance(a: dict, b: dict) -> None:  # type: ignore[type-arg]
    d = total_variation(a, b)
    assert 0.0 <= d <= 1.0 + 1e-12
    assert d == pytest.approx(total_variation(b, a))
    assert total_variation(a, a) == pytest.approx(0.0, abs=1e-12)


def _fields(d: DeviceQuality) -> dict:  # type: ignore[type-arg]
    return {
        "device_id": d.device_id,
        "inferences": d.inferences,
        "errors": d.errors,
        "latency_p95_ms": d.latency_p95_ms,
        "labelled": d.labelled,
        "correct": d.correct,
        "predictions": dict(d.predictions),
    }


# --- the version's reference prediction distribution ---------------------------------

PREDICTIONS = QualityThresholds(max_prediction_shift=0.25)
UNIFORM = {str(c): 36 for c in range(10)}  # a held-out set of 360, every class predicted


def _skewed(rng: np.random.Generator, n: int, *, onto: str, share: float) -> list[DeviceQuality]:
    """Devices predicting class ``onto`` ``share`` of the time, the rest uniformly."""
    out = []
    for i in range(n):
        predictions = rng.multinomial(1000, [(1 - share) / 10] * 10)
        classes = {str(c): int(k) for c, k in enumerate(predictions)}
        classes[onto] += int(1000 * share)
        out.append(DeviceQuality(device_id=f"d{i}", inferences=1000, predictions=classes))
    return out


def test_the_canary_is_compared_with_the_versions_reference_and_the_reason_says_so() -> None:
    # Prepare: the canary predicts class 3 half the time; so does the old version's live
    # traffic (the inputs drifted), while the version's reference is uniform.
    rng = np.random.default_rng(3)
    canary, baseline = _skewed(rng, 5, onto="3", share=0.5), _skewed(rng, 5, onto="3", share=0.5)

    # Execute
    live = compare(canary, baseline, PREDICTIONS)
    stored = compare(canary, baseline, PREDICTIONS, reference=UNIFORM)
    empty = compare(canary, baseline, PREDICTIONS, reference={})

    # Assert: against live traffic nothing shifted; against the reference it did, and
    # the reason names the reference (its samples); an empty reference falls back.
    assert not live.regressed and "previous version's live traffic" in live.findings[0].detail
    assert stored.regressed
    assert "from the version's reference (360 held-out samples" in stored.reason
    assert empty.findings[0].detail == live.findings[0].detail


def test_a_reference_needs_no_baseline_devices_but_the_canary_still_needs_evidence() -> None:
    rng = np.random.default_rng(4)
    canary = _skewed(rng, 3, onto="0", share=0.6)
    assert compare(canary, [], PREDICTIONS, reference=UNIFORM).regressed
    (few,) = compare(canary[:1], [], PREDICTIONS, reference=UNIFORM).findings
    assert few.value is None and not few.regressed  # one device never decides


@settings(max_examples=100, deadline=None)
@given(
    canary=sides,
    baseline=st.lists(device("b"), max_size=6),
    reference=st.dictionaries(st.sampled_from("0123"), counts, min_size=1, max_size=4),
)
def test_a_shift_from_the_reference_holds_with_any_one_canary_device_left_out(
    canary: list[DeviceQuality], baseline: list[DeviceQuality], reference: dict[str, int]
) -> None:
    # Against a reference, the baseline plays no part and one canary device never decides.
    verdict = compare(canary, baseline, PREDICTIONS, reference=reference)
    assert verdict == compare(canary, [], PREDICTIONS, reference=reference)
    if verdict.regressed:
        check = _predictions_vs(reference)
        for i in range(len(canary)):
            rest = _pooled([*canary[:i], *canary[i + 1 :]])
            value, regressed, _ = check(rest, _pooled([]), PREDICTIONS, 0.25, 1)
            assert value is not None and regressed
    if len(canary) <= 1:
        assert not verdict.regressed


@settings(max_examples=100, deadline=None)
@given(st.lists(device(), max_size=6))
def test_a_canary_predicting_like_its_reference_never_regresses(
    devices: list[DeviceQuality],
) -> None:
    # The reference is the canary's own pooled predictions (scaled): no shift.
    pooled = _pooled(devices).predictions
    reference = {c: 3 * n for c, n in pooled.items() if n > 0}
    assert not compare(devices, [], PREDICTIONS, reference=reference).regressed
