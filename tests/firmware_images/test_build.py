"""The builder: the accuracy gate refuses, limits hold, nothing half-written is left."""

from __future__ import annotations

import dataclasses

import pytest

from firmware_images.build import BuildError, BuildRequest, build_bundle
from firmware_images.errors import KeyFileError
from firmware_images.gate import GateRefusedError
from firmware_images.targets import get_target
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
