"""The accuracy gate: an exported model may cost at most the recipe's accuracy drop.

The gate compares the PyTorch model's accuracy with the exported model's, both measured on
the task's held-out (test) split, the exported one run by the target's runtime. A drop
of more than ``max_drop_points`` percentage points refuses the build. The decision is a
pure function of the two accuracies (:func:`evaluate_gate`); measuring them is the
builder's job.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Accuracies are ratios of counts; a drop equal to the limit must pass despite rounding.
_EPS = 1e-9


@dataclass(frozen=True)
class GateReport:
    """What the gate measured and decided.

    Accuracies are fractions in [0, 1]; ``drop_points = 100 * (reference - exported)``
    (negative when the export is more accurate); ``max_abs_diff`` is the largest absolute
    difference between the exported model's outputs and PyTorch's on the held-out set.
    """

    target: str
    precision: str
    reference_accuracy: float
    exported_accuracy: float
    drop_points: float
    max_drop_points: float
    samples: int
    heldout: str
    runtime: str
    max_abs_diff: float
    passed: bool


class GateRefusedError(RuntimeError):
    """The exported model lost more accuracy than the recipe allows; ``report`` says how much."""

    def __init__(self, report: GateReport) -> None:
        self.report = report
        super().__init__(
            f"accuracy gate refused the {report.precision} build for {report.target}: accuracy "
            f"dropped {report.drop_points:.2f} points ({100 * report.reference_accuracy:.2f}% → "
            f"{100 * report.exported_accuracy:.2f}%), the recipe allows "
            f"{report.max_drop_points:.2f}; use more calibration samples, another calibration "
            "method, or a higher precision"
        )


def accuracy_drop_points(reference: float, exported: float) -> float:
    """Accuracy lost by the export, in percentage points (negative if it gained)."""
    return 100.0 * (reference - exported)


def evaluate_gate(
    *,
    target: str,
    precision: str,
    reference_accuracy: float,
    exported_accuracy: float,
    max_drop_points: float,
    samples: int,
    heldout: str,
    runtime: str,
    max_abs_diff: float,
) -> GateReport:
    """Decide whether an export passes: ``drop_points <= max_drop_points``."""
    for name, value in (("reference", reference_accuracy), ("exported", exported_accuracy)):
        if not (0.0 <= value <= 1.0):
            raise ValueError(f"{name} accuracy must be in [0, 1], got {value}")
    if not (0.0 <= max_drop_points <= 100.0):
        raise ValueError(f"max_drop_points must be in [0, 100], got {max_drop_points}")
    if samples < 1:
        raise ValueError("the held-out set must hold at least one sample")
    drop = accuracy_drop_points(reference_accuracy, exported_accuracy)
    passed = math.isfinite(max_abs_diff) and drop <= max_drop_points + _EPS
    return GateReport(
        target=target,
        precision=precision,
        reference_accuracy=reference_accuracy,
        exported_accuracy=exported_accuracy,
        drop_points=drop,
        max_drop_points=max_drop_points,
        samples=samples,
        heldout=heldout,
        runtime=runtime,
        max_abs_diff=max_abs_diff,
        passed=passed,
    )


def format_report(report: GateReport) -> str:
    """A short human-readable table of the gate's measurement and verdict."""
    verdict = "PASS" if report.passed else "REFUSED"
    rows = [
        ("target / precision", f"{report.target} / {report.precision}"),
        ("held-out set", f"{report.heldout} ({report.samples} samples)"),
        ("PyTorch accuracy", f"{100 * report.reference_accuracy:.2f}%"),
        ("exported accuracy", f"{100 * report.exported_accuracy:.2f}%  ({report.runtime})"),
        ("drop", f"{report.drop_points:+.2f} points (allowed {report.max_drop_points:.2f})"),
        ("max |output - PyTorch|", f"{report.max_abs_diff:.3g}"),
        ("verdict", verdict),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)
