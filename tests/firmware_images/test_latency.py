"""Which precision ships: the decision (pure) and the timing with the real runtime."""

from __future__ import annotations

import time

import numpy as np
import pytest

from firmware_images.demo import int8_linear_onnx
from firmware_images.latency import choose_precision, decision_line, measure_latency
from firmware_images.manifest import DECISIONS
from firmware_images.targets import get_target


@pytest.mark.parametrize(
    ("fp32_us", "int8_us", "insist", "same_arch", "fits", "shipped", "decision"),
    [
        (20.0, 10.0, False, True, True, "int8", "int8-faster"),
        (20.0, 20.0, False, True, True, "int8", "int8-faster"),  # a tie keeps the smaller
        (10.0, 12.8, False, True, True, "fp32", "fallback"),
        (10.0, 12.8, True, True, True, "int8", "insisted"),
        (10.0, 12.8, False, False, True, "int8", "other-arch"),
        (10.0, 12.8, False, True, False, "int8", "too-large"),
        (20.0, 10.0, True, False, False, "int8", "other-arch"),
    ],
)
def test_int8_ships_unless_it_is_slower_on_this_arch_and_fp32_can_ship(
    fp32_us, int8_us, insist, same_arch, fits, shipped, decision
) -> None:
    got = choose_precision(
        fp32_us=fp32_us, int8_us=int8_us, insist=insist, same_arch=same_arch, fp32_fits=fits
    )
    assert got == (shipped, decision)


@pytest.mark.parametrize("decision", DECISIONS)
def test_every_decision_is_said_in_one_line_with_both_timings(decision) -> None:
    line = decision_line(
        recipe="cpu-x86", decision=decision, fp32_us=9.5, int8_us=12.25, machine="x86_64 cpu"
    )
    assert "\n" not in line and line.startswith("precision: ")
    assert "12.2 us" in line and "9.5 us" in line
    if decision == "fallback":
        assert "precision: fp32" in line and "keep_int8_if_slower = true" in line


def test_real_timing_is_positive_labelled_and_within_its_budget() -> None:
    # Prepare: two real ONNX models (no torch) taking the same input, one ~800x the work.
    small = int8_linear_onnx(features=64, classes=10, seed=1)
    large = int8_linear_onnx(features=64, classes=8192, seed=2)
    x = np.random.default_rng(0).normal(size=(3, 64)).astype(np.float32)
    recipe = get_target("cpu-x86")
    # Execute: "fp32" is the large one here, only to check which number is whose.
    start = time.perf_counter()
    timing = measure_latency({"fp32": large, "int8": small}, recipe, x, budget_s=0.5)
    elapsed = time.perf_counter() - start
    # Assert: both timed with the recipe's runtime on one thread, each under its name.
    assert set(timing.p50_us) == {"fp32", "int8"}
    assert 0 < timing.p50_us["int8"] < timing.p50_us["fp32"]
    assert 50 <= timing.runs <= 2000
    assert "onnxruntime" in timing.runtime and "1 thread" in timing.runtime
    assert elapsed < 10  # a 0.5 s budget, plus loading and warm-up
