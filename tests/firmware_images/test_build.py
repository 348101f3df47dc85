"""The builder: the accuracy gate refuses, limits hold, nothing half-written is left."""

from __future__ import annotations

import dataclasses
import platform

import onnx
import pytest

from firmware_images.build import BuildError, BuildRequest, build_bundle
from firmware_images.bundle import read_bundle
from firmware_images.errors import KeyFileError
from firmware_images.gate import GateRefusedError
from firmware_images.latency import Timing
from firmware_images.targets import Recipe, get_target
from tasks import get_task

pytestmark = pytest.mark.slow


def _request(tmp_path, checkpoint, signer, **changes) -> BuildRequest:
    base = BuildRequest(
        recipe=get_target("rpi5"),
        task="digits-cnn",
        checkpoint=checkpoint,
        key=signer.private,
        out=tmp_path / "out.ffb",
    )
    return dataclasses.replace(base, **changes)


def test_broken_calibration_is_refused_by_the_gate_and_nothing_is_written(
    tmp_path, digits_checkpoint, signing_key
):
    # Prepare: calibrate on inputs 100x too small, so activations saturate on real data.
    data = get_task("digits-cnn").load_data(0)
    broken = data.x_train[:64] * 0.01
    steps: list[str] = []
    # Execute
    with pytest.raises(GateRefusedError) as err:
        build_bundle(
            _request(tmp_path, digits_checkpoint, signing_key, calibration=broken),
            on_step=steps.append,
        )
    # Assert
    report = err.value.report
    assert not report.passed
    assert report.drop_points > report.max_drop_points == 1.0
    assert report.reference_accuracy > 0.85
    assert report.samples == len(data.x_test)
    assert "onnxruntime" in report.runtime
    assert steps[-1] == "accuracy gate"
    assert list(tmp_path.iterdir()) == []  # no bundle, no temporary file


def test_model_over_the_size_limit_is_refused(tmp_path, digits_checkpoint, signing_key):
    recipe = get_target("cpu-x86")
    tiny = dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, max_bytes=10_000))
    with pytest.raises(BuildError, match="over target cpu-x86's limit of 10000"):
        build_bundle(_request(tmp_path, digits_checkpoint, signing_key, recipe=tiny))
    assert list(tmp_path.iterdir()) == []


def test_cheap_input_errors_come_before_any_export(tmp_path, digits_checkpoint, signing_key):
    steps: list[str] = []
    existing = tmp_path / "exists.ffb"
    existing.write_bytes(b"keep me")
    cases = [
        (dict(out=existing), BuildError, "already exists.*--force"),
        (dict(out=tmp_path / "missing" / "b.ffb"), BuildError, "does not exist"),
        (dict(key=signing_key.public), KeyFileError, "holds a public key"),
        (dict(key=tmp_path / "nope.key"), KeyFileError, "not found"),
        (dict(task="mnist"), ValueError, "unknown task 'mnist'"),
    ]
    for changes, error, message in cases:
        with pytest.raises(error, match=message):
            build_bundle(_request(tmp_path, digits_checkpoint, signing_key, **changes),
                         on_step=steps.append)  # fmt: skip
    assert steps == []  # refused before loading the checkpoint
    assert existing.read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists.ffb"]


def _this_arch(recipe: Recipe) -> Recipe:
    """``recipe`` as if built for this machine's architecture (so timings decide)."""
    arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine().lower())
    return dataclasses.replace(recipe, arch=arch or platform.machine().lower())


def _slower_int8(models, recipe, x) -> Timing:
    assert set(models) == {"fp32", "int8"} and x.shape[0] == 1  # batch 1
    return Timing(p50_us={"fp32": 10.0, "int8": 25.0}, runs=321, runtime="injected")


@pytest.mark.parametrize("insist", [False, True])
def test_int8_measured_slower_falls_back_to_fp32_unless_the_recipe_insists(
    tmp_path, digits_checkpoint, signing_key, insist
):
    # Prepare: cpu-x86 on this machine's arch; the timing (injected) says int8 is slower.
    recipe = _this_arch(get_target("cpu-x86"))
    recipe = dataclasses.replace(
        recipe,
        quantization=dataclasses.replace(recipe.quantization, keep_int8_if_slower=insist),
    )
    steps: list[str] = []
    # Execute
    result = build_bundle(
        _request(tmp_path, digits_checkpoint, signing_key, recipe=recipe,
                 latency_probe=_slower_int8),
        on_step=steps.append,
    )  # fmt: skip
    # Assert: the manifest records both numbers and why; the model is what it says.
    m = result.manifest
    assert m.latency is not None
    assert (m.latency.fp32_p50_us, m.latency.int8_p50_us) == (10.0, 25.0)
    assert (m.latency.runs, m.latency.threads, m.latency.batch) == (321, 1, 1)
    assert "time fp32 against int8" in steps
    ops = {
        n.op_type
        for n in onnx.load_from_string(read_bundle(result.path.read_bytes()).model).graph.node
    }
    if insist:
        assert (m.precision, m.quantization, m.latency.decision) == (
            "int8",
            "static-qdq",
            "insisted",
        )
        assert "QuantizeLinear" in ops
        assert result.note is not None and "although it is slower" in result.note
    else:
        assert (m.precision, m.quantization, m.latency.decision) == ("fp32", "none", "fallback")
        assert "QuantizeLinear" not in ops and "DequantizeLinear" not in ops
        scale = max(1.0, max(abs(v) for v in m.reference.expected_output))
        assert m.reference.atol == pytest.approx(1e-4 * scale, rel=1e-6)  # fp32's self-test
        assert result.note is not None and result.note.startswith("precision: fp32")
    assert result.gate.precision == m.precision  # the gate ran on what ships
    # What ships predicted on the gate's held-out set: the version's canary reference.
    assert sum(result.prediction_counts.values()) == result.gate.samples
    assert set(result.prediction_counts) <= {str(c) for c in range(10)}


def test_prediction_counts_are_keyed_as_devices_report_classes() -> None:
    import numpy as np

    from firmware_images.build import prediction_counts

    logits = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.0, 0.2, 0.7], [0.0, 1.0, 0.0]])
    assert prediction_counts(logits) == {"0": 1, "1": 2, "2": 1}


def test_real_timing_is_recorded_and_the_faster_precision_ships(
    tmp_path, digits_checkpoint, signing_key
):
    # Execute: the built-in cpu-x86 recipe, timed for real on this machine.
    result = build_bundle(
        _request(tmp_path, digits_checkpoint, signing_key, recipe=get_target("cpu-x86"))
    )
    # Assert
    lat = result.manifest.latency
    assert lat is not None
    assert lat.fp32_p50_us > 0 and lat.int8_p50_us > 0 and lat.runs >= 50
    assert "onnxruntime" in lat.runtime and lat.machine.startswith(platform.machine())
    if _this_arch(get_target("cpu-x86")).arch != "x86_64":
        assert lat.decision == "other-arch" and result.manifest.precision == "int8"
    else:
        faster = "int8" if lat.int8_p50_us <= lat.fp32_p50_us else "fp32"
        assert result.manifest.precision == faster
        assert lat.decision == ("int8-faster" if faster == "int8" else "fallback")
    assert result.note is not None and f"precision: {result.manifest.precision}" in result.note
