"""Edge export benchmark: size and single-inference latency, fp32 against int8, ONNX and TFLite.

For each task, trains the model centrally, exports it as fp32 ONNX, static-QDQ int8 ONNX
(onnxruntime), fp32 TFLite and static int8 TFLite (litert-torch + LiteRT quantizer), and
measures with the device runtimes (onnxruntime, ai-edge-litert) on ONE thread:

- model size in bytes;
- latency of one inference (batch 1) through fedfleet's runner, i.e. what a device pays,
  int8 I/O quantization included: median and p95 over many calls, with the variants
  measured in interleaved rounds so that load from other processes hits all of them alike;
- the same latency for the runtime's own call on a ready input ("runtime p50": no
  fedfleet code, input already quantized), to separate the runtime from the runner;
- per-sample time of a 256-sample batch through the runner ("b256"), where int8 compute,
  not call overhead, dominates;
- held-out accuracy, so a fast variant that is wrong does not go unnoticed;
- the goal "int8 never slower than the shipped precision" (issue 18): for each task and
  format, the precision ``image build`` would ship (its own quick timing,
  ``firmware_images.latency``, and decision, with the cpu-x86 / rpi4 recipe) must be the
  faster by this bench's longer measurement, within ``NOISE``; printed met / not met.

Run: ``python bench/export.py [--tasks digits-cnn,breast-cancer-mlp] [--calls 2000]``.
TFLite columns need the ``tflite`` extra (see docs/bundle.md); without it they are skipped.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from firmware_images.export import export_onnx, export_tflite
from firmware_images.latency import choose_precision, measure_latency, same_arch
from firmware_images.quantize import calibration_set, quantize_onnx_static, quantize_tflite_static
from firmware_images.runtime import ModelRunner, accuracy, load_runner
from firmware_images.targets import get_target
from tasks import get_task, train_local

BATCH = 256
NOISE = 0.03  # p50 differences below 3% are within what two runs of this bench differ by
RECIPES = {"onnx": "cpu-x86", "tflite": "rpi4"}  # the shipped recipe of each format


@dataclass
class Variant:
    """One exported model and what was measured about it."""

    task: str
    fmt: str
    precision: str
    size: int
    blob: bytes
    runner: ModelRunner
    raw: Callable[[], object]
    accuracy: float
    times_us: list[float]
    raw_times_us: list[float]
    batch_us: list[float]


def build_variants(task_name: str, *, epochs: int, with_tflite: bool) -> list[Variant]:
    """Train ``task_name`` and export the four variants (two without TFLite)."""
    torch.manual_seed(0)
    task = get_task(task_name)
    data = task.load_data(0)
    model = task.build_model()
    train_local(
        model, data.x_train, data.y_train, epochs=epochs, batch_size=16,
        learning_rate=task.defaults.learning_rate, seed=0,
    )  # fmt: skip
    model.eval()
    calib = calibration_set(data, samples=256, seed=0)
    models: list[tuple[str, str, bytes]] = []
    onnx_fp32 = export_onnx(model, sample=data.x_test[:2], opset=18, dynamic_batch=True)
    models += [
        ("onnx", "fp32", onnx_fp32),
        ("onnx", "int8", quantize_onnx_static(onnx_fp32, calib)),
    ]
    if with_tflite:
        tflite_fp32 = export_tflite(model, sample=data.x_test[:1])
        models += [
            ("tflite", "fp32", tflite_fp32),
            ("tflite", "int8", quantize_tflite_static(tflite_fp32, calib)),
        ]
    variants = []
    for fmt, precision, blob in models:
        runner = load_runner(model=blob, model_format=fmt, threads=1)
        variants.append(
            Variant(
                task=task_name, fmt=fmt, precision=precision, size=len(blob), blob=blob,
                runner=runner,
                raw=_raw_call(fmt, blob, data.x_test[:1]),
                accuracy=accuracy(runner, data.x_test, data.y_test), times_us=[], raw_times_us=[], batch_us=[],
            )
        )  # fmt: skip
    with torch.no_grad():
        torch_acc = float(
            np.mean(model(torch.from_numpy(data.x_test)).argmax(1).numpy() == data.y_test)
        )
    print(f"{task_name}: PyTorch held-out accuracy {100 * torch_acc:.2f}%")
    return variants


def measure(variants: list[Variant], x: np.ndarray, *, calls: int, rounds: int) -> None:
    """Time single-sample inferences (and a 256-sample batch), variants interleaved."""
    sample = np.ascontiguousarray(x[:1], dtype=np.float32)
    batch = np.ascontiguousarray(x[:BATCH], dtype=np.float32)
    for v in variants:  # warm-up: first-call allocations, caches
        for _ in range(200):
            v.runner.run(sample)
            v.raw()
    per_round = max(1, calls // rounds)
    for _ in range(rounds):
        for v in variants:
            for _ in range(per_round):
                start = time.perf_counter_ns()
                v.runner.run(sample)
                v.times_us.append((time.perf_counter_ns() - start) / 1000)
            for _ in range(per_round):
                start = time.perf_counter_ns()
                v.raw()
                v.raw_times_us.append((time.perf_counter_ns() - start) / 1000)
            for _ in range(max(1, per_round // 100)):
                start = time.perf_counter_ns()
                v.runner.run(batch)
                v.batch_us.append((time.perf_counter_ns() - start) / 1000 / len(batch))


def _raw_call(fmt: str, blob: bytes, x: np.ndarray) -> Callable[[], object]:
    """The runtime's own call on a ready input (no fedfleet code, no I/O quantization)."""
    if fmt == "onnx":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(blob, options, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: np.ascontiguousarray(x, dtype=np.float32)}
        return lambda: session.run(None, feed)
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=blob, num_threads=1)
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    ready = x.astype(np.float32)
    if inp["dtype"] != np.float32:
        scale, zero = inp["quantization"]
        ready = np.clip(np.round(x / scale) + zero, -128, 127).astype(inp["dtype"])

    def call() -> object:
        interp.set_tensor(inp["index"], ready)
        interp.invoke()
        return interp.get_tensor(out["index"])

    return call


def table(variants: list[Variant]) -> str:
    """Side-by-side table; int8 rows carry size and latency ratios against their fp32."""
    head = (
        f"{'task':<18} {'format':<7} {'prec':<5} {'size (B)':>10} {'size/fp32':>9} "
        f"{'p50 (us)':>9} {'p95 (us)':>9} {'p50/fp32':>8} {'runtime p50':>11} {'/fp32':>6} "
        f"{'b256 us/smp':>11} {'/fp32':>6} {'accuracy':>8}"
    )
    lines = [head, "-" * len(head)]
    fp32 = {(v.task, v.fmt): v for v in variants if v.precision == "fp32"}
    for v in variants:
        base = fp32[(v.task, v.fmt)]
        p50, p95 = np.percentile(v.times_us, [50, 95])
        base_p50 = float(np.percentile(base.times_us, 50))
        raw = float(np.percentile(v.raw_times_us, 50))
        base_raw = float(np.percentile(base.raw_times_us, 50))
        per_sample = float(np.median(v.batch_us))
        base_sample = float(np.median(base.batch_us))
        lines.append(
            f"{v.task:<18} {v.fmt:<7} {v.precision:<5} {v.size:>10,} {v.size / base.size:>9.2f} "
            f"{p50:>9.1f} {p95:>9.1f} {p50 / base_p50:>8.2f} {raw:>11.1f} {raw / base_raw:>6.2f} "
            f"{per_sample:>11.2f} {per_sample / base_sample:>6.2f} {100 * v.accuracy:>7.2f}%"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="digits-cnn,breast-cancer-mlp")
    parser.add_argument("--calls", type=int, default=3000, help="timed calls per variant")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds")
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    try:
        import litert_torch  # noqa: F401

        with_tflite = True
    except ImportError:
        with_tflite = False
        print("litert-torch not installed: TFLite columns skipped (see docs/bundle.md)")
    variants: list[Variant] = []
    for name in args.tasks.split(","):
        task_variants = build_variants(name, epochs=args.epochs, with_tflite=with_tflite)
        measure(
            task_variants, get_task(name).load_data(0).x_test, calls=args.calls, rounds=args.rounds
        )
        variants += task_variants
    import onnxruntime

    litert = _version("ai-edge-litert") if with_tflite else "-"
    print(
        f"\nmachine: {_cpu_name()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; "
        f"python {platform.python_version()}, onnxruntime {onnxruntime.__version__}, "
        f"ai-edge-litert {litert}; 1 thread, batch 1, {args.calls} calls per variant\n"
    )
    print(table(variants))
    print("\n## Goal: int8 never slower than the shipped precision\n")
    for line in shipped_goal(variants):
        print(line)


def shipped_goal(variants: list[Variant]) -> list[str]:
    """For each task and format: what ``image build`` would ship, and whether that is the
    faster precision by this bench's p50s (met / NOT MET)."""
    lines = []
    by_key = {(v.task, v.fmt, v.precision): v for v in variants}
    for task, fmt in sorted({(v.task, v.fmt) for v in variants}):
        fp32, int8 = by_key[(task, fmt, "fp32")], by_key[(task, fmt, "int8")]
        recipe = get_target(RECIPES[fmt])
        x = get_task(task).load_data(0).x_test[:1]
        probe = measure_latency({"fp32": fp32.blob, "int8": int8.blob}, recipe, x)
        shipped, decision = choose_precision(
            fp32_us=probe.p50_us["fp32"],
            int8_us=probe.p50_us["int8"],
            insist=recipe.quantization.keep_int8_if_slower,
            same_arch=same_arch(recipe),
            fp32_fits=fp32.size <= recipe.model.max_bytes,
        )
        p50 = {p: float(np.percentile(v.times_us, 50)) for p, v in (("fp32", fp32), ("int8", int8))}
        other = "fp32" if shipped == "int8" else "int8"
        ratio = p50[shipped] / p50[other]
        head = (
            f"- {task} {fmt} ({recipe.name}): build timing int8/fp32 "
            f"{probe.p50_us['int8'] / probe.p50_us['fp32']:.2f} ({probe.runs} runs) -> ships "
            f"{shipped} ({decision}); bench p50 {shipped}/{other} = {ratio:.2f}"
        )
        if decision == "other-arch":
            lines.append(f"{head}: not judged here ({recipe.name} is {recipe.arch})")
        else:
            met = ratio <= 1 + NOISE
            lines.append(f"{head}: {'met' if met else 'NOT MET'} (shipped <= other x {1 + NOISE})")
    return lines


def _version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    main()
