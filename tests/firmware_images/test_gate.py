"""The accuracy gate's decision (pure) and its report."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware_images.gate import (
    GateRefusedError,
    accuracy_drop_points,
    evaluate_gate,
    format_report,
)

COMMON = dict(
    target="rpi5", precision="int8", samples=360, heldout="test", runtime="ort", max_abs_diff=0.1
)


def _gate(reference: float, exported: float, limit: float = 1.0):
    return evaluate_gate(
        reference_accuracy=reference, exported_accuracy=exported, max_drop_points=limit, **COMMON
    )


def test_drop_exactly_at_the_limit_passes_and_just_over_is_refused():
    # 360 samples: one sample is 0.2778 points; 3 samples = 0.833, 4 samples = 1.111
    assert _gate(300 / 360, 297 / 360).passed
    assert not _gate(300 / 360, 296 / 360).passed
    assert _gate(0.90, 0.89).passed  # exactly 1.0 point despite float rounding


def test_an_export_that_gains_accuracy_passes_with_a_negative_drop():
    report = _gate(0.90, 0.92)
    assert report.passed and report.drop_points == pytest.approx(-2.0)


def test_zero_tolerance_refuses_any_loss():
    assert _gate(0.9, 0.9, limit=0.0).passed
    assert not _gate(0.9, 0.9 - 1 / 360, limit=0.0).passed


def test_non_finite_outputs_are_refused_even_with_equal_accuracy():
    report = evaluate_gate(
        reference_accuracy=0.9,
        exported_accuracy=0.9,
        max_drop_points=1.0,
        **{**COMMON, "max_abs_diff": float("nan")},
    )
    assert not report.passed


@pytest.mark.parametrize(
    ("reference", "exported", "limit", "message"),
    [
        (1.2, 0.9, 1.0, "reference accuracy must be in"),
        (0.9, -0.1, 1.0, "exported accuracy must be in"),
        (0.9, 0.9, -1.0, "max_drop_points"),
        (0.9, 0.9, 101.0, "max_drop_points"),
    ],
)
def test_invalid_inputs_are_refused(reference, exported, limit, message):
    with pytest.raises(ValueError, match=message):
        _gate(reference, exported, limit)


accuracy = st.integers(min_value=0, max_value=1000).map(lambda k: k / 1000)


@given(reference=accuracy, exported=accuracy, limit=st.floats(0, 100))
def test_passes_exactly_when_the_drop_is_within_the_limit(reference, exported, limit):
    report = _gate(reference, exported, limit)
    drop = accuracy_drop_points(reference, exported)
    assert report.drop_points == drop
    assert report.passed == (drop <= limit + 1e-9)


@given(reference=accuracy, worse=accuracy, better=accuracy, limit=st.floats(0, 100))
def test_a_more_accurate_export_never_fails_where_a_less_accurate_one_passes(
    reference, worse, better, limit
):
    lo, hi = sorted((worse, better))
    if _gate(reference, lo, limit).passed:
        assert _gate(reference, hi, limit).passed


def test_report_and_refusal_message_say_what_happened():
    report = _gate(0.95, 0.80)
    text = format_report(report)
    assert "REFUSED" in text and "95.00%" in text and "80.00%" in text and "+15.00" in text
    message = str(GateRefusedError(report))
    assert "dropped 15.00 points" in message and "allows 1.00" in message
    assert "calibration" in message  # says how to fix it
    assert "PASS" in format_report(_gate(0.9, 0.9))
