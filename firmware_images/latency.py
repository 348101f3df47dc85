"""Which precision ships: int8 only where it is not slower than fp32 (build side).

Static int8 is smaller, but on some CPUs and for small models its quantize/dequantize
steps cost more than the integer kernels save (``bench/export.py`` measured int8 ONNX at
1.06x the fp32 latency for digits-cnn and 1.28x for breast-cancer-mlp on x86-64).
``fedfleet image build`` therefore times both precisions with the target's runtime on
the build machine — one thread, batch 1, the p50 of single inferences through fedfleet's
runner, the two models interleaved so that load from other processes hits both alike —
and :func:`choose_precision` decides what ships. The measurement is a parameter of the
build (:data:`LatencyProbe`), so the decision can be tested deterministically.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

from firmware_images.manifest import Decision
from firmware_images.runtime import load_runner
from firmware_images.targets import Recipe

BUDGET_S = 2.0  # wall time of the timed calls, both precisions together
MIN_RUNS = 50  # timed calls per precision, whatever the budget
MAX_RUNS = 2000  # enough for a p50 stable to ~1-2 % on a quiet machine
WARMUP = 20
ROUNDS = 10  # interleaved rounds: fp32 block, int8 block, fp32 block, ...


@dataclass(frozen=True)
class Timing:
    """p50 latency in microseconds of each precision, the timed calls per precision, and
    the runtime that ran them."""

    p50_us: Mapping[str, float]
    runs: int
    runtime: str


LatencyProbe = Callable[[Mapping[str, bytes], Recipe, np.ndarray], Timing]
"""``(models by precision, recipe, one input of batch 1) -> Timing``: how a build times
its candidate models (:func:`measure_latency` unless a test injects another)."""


def build_machine() -> str:
    """The build machine's architecture and CPU model, e.g. ``x86_64 AMD EPYC 7B13``."""
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{platform.machine()} {cpu}".strip()


def same_arch(recipe: Recipe) -> bool:
    """Whether this machine has the recipe's architecture (so its timings are relevant)."""
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine) == recipe.arch


def measure_latency(
    models: Mapping[str, bytes],
    recipe: Recipe,
    x: np.ndarray,
    *,
    budget_s: float = BUDGET_S,
    max_runs: int = MAX_RUNS,
) -> Timing:
    """p50 of single inferences of each model with the recipe's runtime on 1 thread
    (onnxruntime with the recipe's providers that this machine has), interleaved in
    rounds until ``max_runs`` calls each or the time budget is spent (``MIN_RUNS`` at
    least)."""
    sample = np.ascontiguousarray(x[:1], dtype=np.float32)
    runners = {
        precision: load_runner(
            model=blob,
            model_format=recipe.model.format,
            threads=1,
            providers=recipe.runtime.providers or None,
        )
        for precision, blob in models.items()
    }
    for runner in runners.values():
        for _ in range(WARMUP):
            runner.run(sample)
    times: dict[str, list[float]] = {p: [] for p in runners}
    per_round = max(1, max_runs // ROUNDS)
    deadline = time.perf_counter() + budget_s
    runs = 0
    while runs < max_runs and (runs < MIN_RUNS or time.perf_counter() < deadline):
        for precision, runner in runners.items():
            bucket = times[precision]
            for _ in range(per_round):
                start = time.perf_counter_ns()
                runner.run(sample)
                bucket.append((time.perf_counter_ns() - start) / 1000)
        runs += per_round
    description = next(iter(runners.values())).description
    return Timing(
        p50_us={p: float(np.median(t)) for p, t in times.items()},
        runs=runs,
        runtime=description,
    )


def choose_precision(
    *, fp32_us: float, int8_us: float, insist: bool, same_arch: bool, fp32_fits: bool
) -> tuple[Literal["fp32", "int8"], Decision]:
    """What ships for an int8 recipe, and why (see :data:`Decision`)."""
    if not same_arch:
        return "int8", "other-arch"
    if int8_us <= fp32_us:
        return "int8", "int8-faster"
    if insist:
        return "int8", "insisted"
    if not fp32_fits:
        return "int8", "too-large"
    return "fp32", "fallback"


def decision_line(
    *, recipe: str, decision: Decision, fp32_us: float, int8_us: float, machine: str
) -> str:
    """The one line ``image build`` prints about the choice."""
    timing = f"int8 p50 {int8_us:.1f} us vs fp32 {fp32_us:.1f} us on {machine}, 1 thread"
    return {
        "int8-faster": f"precision: int8 ({timing})",
        "fallback": (
            f"precision: fp32, not the recipe's int8: int8 is slower ({timing}); set "
            f"[quantization] keep_int8_if_slower = true in {recipe} to ship int8 anyway"
        ),
        "insisted": (
            f"precision: int8 although it is slower ({timing}): {recipe} sets keep_int8_if_slower"
        ),
        "other-arch": (
            f"precision: int8 as {recipe} says; not decided by latency ({timing}): this "
            "machine is not the target's architecture"
        ),
        "too-large": (
            f"precision: int8 although it is slower ({timing}): fp32 is over {recipe}'s max_bytes"
        ),
    }[decision]
