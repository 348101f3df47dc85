"""Build a signed bundle for one target from a task checkpoint (build side).

One pass, in this order, so that nothing is written unless everything passed:

1. check the inputs that are cheap to check (output path, signing key, task, checkpoint);
2. export the model in the recipe's format (fp32), then reduce its precision as the
   recipe says (static int8 with calibration from the TRAINING split, or fp16);
3. check the model's size against the recipe's limit; for an int8 recipe, time fp32
   against int8 and ship fp32 where int8 is slower (:mod:`firmware_images.latency`);
4. the accuracy gate: run the exported model with the target's runtime on the task's
   held-out TEST split and compare with the PyTorch model (:mod:`firmware_images.gate`);
5. record a reference input (the first test sample) and the exported model's output for
   it, write the manifest, sign it, pack the bundle, verify it once more with the public
   half of the key, and write it atomically.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path

import numpy as np
import torch

from firmware_images.bundle import pack_bundle, sha256_hex, verify_bundle, write_atomic
from firmware_images.export import export_onnx, export_tflite, file_sha256, load_checkpoint
from firmware_images.gate import GateRefusedError, GateReport, evaluate_gate
from firmware_images.keys import key_id, load_private_key
from firmware_images.latency import (
    LatencyProbe,
    build_machine,
    choose_precision,
    decision_line,
    measure_latency,
    same_arch,
)
from firmware_images.manifest import (
    MODEL_FILE_NAMES,
    AccuracyRecord,
    LatencyRecord,
    Manifest,
    ModelFile,
    Precision,
    ReferenceCheck,
    RuntimeSpec,
    SourceRecord,
    TensorSpec,
    default_release,
)
from firmware_images.quantize import (
    calibration_set,
    convert_onnx_fp16,
    quantize_onnx_static,
    quantize_tflite_static,
)
from firmware_images.runtime import ModelRunner, load_runner
from firmware_images.targets import Recipe
from tasks import get_task
from tasks.base import Dataset

# Self-test tolerance per output value, relative to max(1, max |expected output|):
# fp32 reproduces to rounding, fp16 to its 11-bit mantissa, int8 to a few quantization
# steps (devices' integer kernels may round differently from the build machine's).
SELF_TEST_RTOL = {"fp32": 1e-4, "fp16": 1e-2, "int8": 5e-2}
INPUT_NAME = "input"
OUTPUT_NAME = "output"

StepCallback = Callable[[str], None]


class BuildError(ValueError):
    """A build input is wrong (output path, size limit...); the message says how to fix it."""


@dataclass(frozen=True)
class BuildRequest:
    """What to build: a recipe, a task checkpoint, a signing key and an output file.

    ``version`` labels the model in the manifest (default: ``v<N>`` for registry version
    ``model_version`` N, else ``ckpt-`` and the first 12 hex digits of the checkpoint's
    SHA-256). ``data_seed`` is the task's ``load_data`` seed;
    ``calibration_seed`` draws the calibration samples from the training split.
    ``calibration`` replaces that calibration set (for experiments and tests), and
    ``latency_probe`` the timing of fp32 against int8 (:func:`measure_latency`).
    """

    recipe: Recipe
    task: str
    checkpoint: Path
    key: Path
    out: Path
    version: str | None = None
    model_version: str | None = None
    data_seed: int = 0
    calibration_seed: int = 0
    calibration: np.ndarray | None = None
    force: bool = False
    latency_probe: LatencyProbe | None = None
    release: int | None = None


def version_label(request: BuildRequest, checkpoint_sha: str) -> str:
    """The manifest's ``version``: ``--version``, else the registry version the bundle
    was built from (``v7``), else the checkpoint's hash (``ckpt-`` + 12 hex digits)."""
    if request.version:
        return request.version
    if request.model_version:
        return f"v{request.model_version}"
    return f"ckpt-{checkpoint_sha[:12]}"


@dataclass(frozen=True)
class BuildResult:
    """A written bundle: its path, size in bytes, manifest and gate report, and for an
    int8 recipe the one line that says which precision ships and why."""

    path: Path
    size: int
    manifest: Manifest
    gate: GateReport
    note: str | None = None
    # The shipped model's predicted classes on the gate's held-out set ({"class": count},
    # classes as devices report them): the version's reference prediction distribution
    # for model-aware canaries (fleet.ota.canary_quality).
    prediction_counts: dict[str, int] = field(default_factory=dict)


def build_bundle(request: BuildRequest, *, on_step: StepCallback | None = None) -> BuildResult:
    """Build, gate, sign and write one bundle; raise before writing anything on failure.

    Raises :class:`BuildError`, :class:`~firmware_images.export.CheckpointError`,
    :class:`~firmware_images.errors.KeyFileError`, ``ValueError`` (unknown task),
    :class:`~firmware_images.export.ExportError` or
    :class:`~firmware_images.gate.GateRefusedError`.
    """
    step = on_step or (lambda _name: None)
    recipe = request.recipe
    out = Path(request.out)
    if not out.parent.is_dir():
        raise BuildError(f"folder {out.parent} does not exist; create it or choose another --out")
    if out.exists() and not request.force:
        raise BuildError(f"{out} already exists; choose another --out or pass --force")
    private_key = load_private_key(request.key)
    public_key = private_key.public_key()
    task = get_task(request.task)

    step("load checkpoint")
    model = load_checkpoint(task, request.checkpoint)
    checkpoint_sha = file_sha256(request.checkpoint)
    data = task.load_data(request.data_seed)
    x_test, y_test = data.x_test, data.y_test
    with torch.no_grad():
        torch_logits = model(torch.from_numpy(np.ascontiguousarray(x_test))).numpy()
    reference_accuracy = float(np.mean(torch_logits.argmax(axis=1) == y_test))

    step(f"export {recipe.model.format}")
    fp32_bytes = _export(recipe, model, x_test)
    model_bytes = _reduce_precision(request, recipe, fp32_bytes, data, step)
    if len(model_bytes) > recipe.model.max_bytes:
        raise BuildError(
            f"the {recipe.model.precision} model is {len(model_bytes)} bytes, over target "
            f"{recipe.name}'s limit of {recipe.model.max_bytes}; use a smaller model or int8"
        )

    precision, method, latency, note = (
        recipe.model.precision,
        recipe.quantization.method,
        None,
        None,
    )
    if recipe.model.precision == "int8":
        step("time fp32 against int8")
        latency, note = _time_precisions(request, fp32_bytes, model_bytes, x_test[:1])
        if latency.decision == "fallback":
            model_bytes, precision, method = fp32_bytes, "fp32", "none"

    step("accuracy gate")
    runner = load_runner(
        model=model_bytes,
        model_format=recipe.model.format,
        threads=recipe.runtime.threads,
        providers=recipe.runtime.providers or None,
    )
    exported_logits = _run_all(runner, x_test)
    exported_accuracy = float(np.mean(exported_logits.argmax(axis=1) == y_test))
    heldout = f"{task.name} test split (load_data seed {request.data_seed})"
    report = evaluate_gate(
        target=recipe.name,
        precision=precision,
        reference_accuracy=reference_accuracy,
        exported_accuracy=exported_accuracy,
        max_drop_points=recipe.gate.max_accuracy_drop,
        samples=len(x_test),
        heldout=heldout,
        runtime=runner.description,
        max_abs_diff=float(np.max(np.abs(exported_logits - torch_logits))),
    )
    if not report.passed:
        raise GateRefusedError(report)

    step("sign and write")
    manifest = _manifest(
        request=request,
        recipe=recipe,
        model_bytes=model_bytes,
        runner=runner,
        x_ref=x_test[:1],
        num_classes=task.num_classes,
        input_shape=task.input_shape,
        report=report,
        checkpoint_sha=checkpoint_sha,
        signing_key_id=key_id(public_key),
        shipped=(precision, method, latency),
    )
    bundle = pack_bundle(manifest=manifest, model=model_bytes, private_key=private_key)
    verify_bundle(bundle, public_key=public_key, target=recipe.name)
    write_atomic(out, bundle)
    return BuildResult(
        path=out,
        size=len(bundle),
        manifest=manifest,
        gate=report,
        note=note,
        prediction_counts=prediction_counts(exported_logits),
    )


def prediction_counts(logits: np.ndarray) -> dict[str, int]:
    """How often each class is predicted (argmax), keyed as devices report classes."""
    classes, counts = np.unique(logits.argmax(axis=1), return_counts=True)
    return {str(int(c)): int(n) for c, n in zip(classes, counts, strict=True)}


def _export(recipe: Recipe, model: torch.nn.Module, x_test: np.ndarray) -> bytes:
    """The fp32 model in the recipe's format."""
    batch = recipe.model.batch
    sample = x_test[: batch or 2]
    if recipe.model.format == "tflite":
        return export_tflite(model, sample=sample)
    if recipe.model.opset is None:  # pragma: no cover - the recipe parser sets it
        raise BuildError(f"recipe {recipe.name} has no ONNX opset")
    return export_onnx(
        model,
        sample=sample,
        opset=recipe.model.opset,
        dynamic_batch=batch is None,
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
    )


def _reduce_precision(
    request: BuildRequest, recipe: Recipe, fp32_bytes: bytes, data: Dataset, step: StepCallback
) -> bytes:
    """The model at the recipe's precision (``fp32_bytes`` itself for fp32)."""
    quant = recipe.quantization
    if quant.method == "none":
        return fp32_bytes
    step(f"quantize ({quant.method})")
    if quant.method == "fp16-cast":
        return convert_onnx_fp16(fp32_bytes)
    calibration = request.calibration
    if calibration is None:
        calibration = calibration_set(
            data, samples=quant.calibration_samples, seed=request.calibration_seed
        )
    if quant.method == "litert-static":
        return quantize_tflite_static(fp32_bytes, calibration)
    return quantize_onnx_static(
        fp32_bytes,
        calibration,
        per_channel=quant.per_channel,
        activation_type=quant.activation_type,
        calibrate_method=quant.calibrate_method,
    )


def _time_precisions(
    request: BuildRequest, fp32_bytes: bytes, int8_bytes: bytes, x_one: np.ndarray
) -> tuple[LatencyRecord, str]:
    """Time both models (the request's probe, else :func:`measure_latency`), decide which
    ships, and say so in one line."""
    recipe = request.recipe
    probe = request.latency_probe or measure_latency
    timing = probe({"fp32": fp32_bytes, "int8": int8_bytes}, recipe, x_one)
    fp32_us, int8_us = timing.p50_us["fp32"], timing.p50_us["int8"]
    _, decision = choose_precision(
        fp32_us=fp32_us,
        int8_us=int8_us,
        insist=recipe.quantization.keep_int8_if_slower,
        same_arch=same_arch(recipe),
        fp32_fits=len(fp32_bytes) <= recipe.model.max_bytes,
    )
    machine = build_machine()
    record = LatencyRecord(
        fp32_p50_us=fp32_us,
        int8_p50_us=int8_us,
        runs=timing.runs,
        threads=1,
        batch=1,
        runtime=timing.runtime,
        machine=machine,
        decision=decision,
    )
    line = decision_line(
        recipe=recipe.name, decision=decision, fp32_us=fp32_us, int8_us=int8_us, machine=machine
    )
    return record, line


def _manifest(
    *,
    request: BuildRequest,
    recipe: Recipe,
    model_bytes: bytes,
    runner: ModelRunner,
    x_ref: np.ndarray,
    num_classes: int,
    input_shape: tuple[int, ...],
    report: GateReport,
    checkpoint_sha: str,
    signing_key_id: str,
    shipped: tuple[Precision, str, LatencyRecord | None],
) -> Manifest:
    precision, method, latency = shipped
    expected = runner.run(x_ref)
    rtol = SELF_TEST_RTOL[precision]
    atol = rtol * max(1.0, float(np.max(np.abs(expected))))
    batch = recipe.model.batch
    opset = None
    if recipe.model.format == "onnx":
        from firmware_images.export import onnx_opset

        opset = onnx_opset(model_bytes)
    return Manifest(
        version=version_label(request, checkpoint_sha),
        created=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        task=request.task,
        target=recipe.name,
        arch=recipe.arch,
        runtime=RuntimeSpec(
            name=recipe.runtime.name,
            min_version=recipe.runtime.min_version,
            providers=recipe.runtime.providers,
        ),
        format=recipe.model.format,
        precision=precision,
        quantization=method,
        model=ModelFile(
            file=MODEL_FILE_NAMES[recipe.model.format],
            sha256=sha256_hex(model_bytes),
            size=len(model_bytes),
        ),
        inputs=(TensorSpec(name=INPUT_NAME, shape=(batch, *input_shape), dtype="float32"),),
        outputs=(TensorSpec(name=OUTPUT_NAME, shape=(batch, num_classes), dtype="float32"),),
        reference=ReferenceCheck(
            input_shape=tuple(int(d) for d in x_ref.shape),
            input=tuple(float(v) for v in x_ref.astype(np.float32).ravel()),
            output_shape=tuple(int(d) for d in expected.shape),
            expected_output=tuple(float(v) for v in expected.astype(np.float32).ravel()),
            atol=float(np.float32(atol)),
        ),
        accuracy=AccuracyRecord(
            reference=report.reference_accuracy,
            exported=report.exported_accuracy,
            drop_points=report.drop_points,
            max_drop_points=report.max_drop_points,
            heldout=report.heldout,
            samples=report.samples,
            runtime=report.runtime,
        ),
        source=SourceRecord(checkpoint_sha256=checkpoint_sha, model_version=request.model_version),
        key_id=signing_key_id,
        builder=f"fedfleet {_fedfleet_version()}",
        opset=opset,
        latency=latency,
        release=request.release if request.release is not None else default_release(),
    )


def _run_all(runner: ModelRunner, x: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
    return np.concatenate([runner.run(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


def _fedfleet_version() -> str:
    try:
        return package_version("fedfleet")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0+unknown"
