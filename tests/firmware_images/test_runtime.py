"""The device half: import isolation, loading, inference and the self-test."""

from __future__ import annotations

import ast
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import firmware_images
from firmware_images.bundle import verify_bundle
from firmware_images.errors import ModelLoadError, RuntimeUnavailableError, SelfTestError
from firmware_images.keys import load_public_key
from firmware_images.runtime import TFLiteRunner, load_runner, runner_for, self_test

DEVICE_MODULES = ["errors", "keys", "manifest", "bundle_layout", "bundle", "targets", "runtime"]
ALLOWED_THIRD_PARTY = {"cryptography", "numpy", "onnxruntime", "ai_edge_litert"}
FORBIDDEN = {
    "torch", "onnx", "onnxscript", "litert_torch", "ai_edge_quantizer", "tasks",
    "coordinator", "fleet", "simulation", "flwr", "fastapi", "sqlmodel",
}  # fmt: skip


def test_device_modules_import_nothing_from_the_build_side():
    # Execute: a fresh interpreter imports the device half and lists what got loaded.
    code = (
        "import sys, json\n"
        + "".join(f"import firmware_images.{m}\n" for m in DEVICE_MODULES)
        + "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(json.loads(out.stdout))
    # Assert
    assert loaded & FORBIDDEN == set()
    assert {"cryptography", "numpy"} <= loaded
    assert {"onnxruntime", "ai_edge_litert"} & loaded == set()  # loaded with a model only


@pytest.mark.parametrize("module", DEVICE_MODULES)
def test_device_module_sources_import_only_allowed_packages(module):
    source = Path(firmware_images.__file__).parent / f"{module}.py"
    roots: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    third_party = roots - set(sys.stdlib_module_names) - {"firmware_images", "__future__"}
    assert third_party <= ALLOWED_THIRD_PARTY | {"tomli"}, third_party
    own = {
        node.module
        for node in ast.walk(ast.parse(source.read_text()))
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("firmware")
    }
    assert own <= {f"firmware_images.{m}" for m in DEVICE_MODULES}, own


def test_self_test_passes_on_a_built_bundle_and_fails_on_a_wrong_expectation(
    cpu_bundle, signing_key
):
    verified = verify_bundle(cpu_bundle, public_key=load_public_key(signing_key.public))
    runner = runner_for(verified.manifest, verified.model)
    result = self_test(verified.manifest, runner)
    assert result.max_abs_diff <= result.atol
    assert "onnxruntime" in result.runner

    ref = verified.manifest.reference
    shifted = tuple(v + 10 * ref.atol for v in ref.expected_output)
    wrong = dataclasses.replace(
        verified.manifest, reference=dataclasses.replace(ref, expected_output=shifted)
    )
    with pytest.raises(SelfTestError, match="differs from the expected output"):
        self_test(wrong, runner)
    reshaped = dataclasses.replace(
        verified.manifest,
        reference=dataclasses.replace(ref, output_shape=(len(ref.expected_output), 1)),
    )
    with pytest.raises(SelfTestError, match="shape"):
        self_test(reshaped, runner)


def test_onnx_runner_takes_any_batch_size(cpu_bundle, signing_key):
    verified = verify_bundle(cpu_bundle, public_key=load_public_key(signing_key.public))
    runner = load_runner(model=verified.model, model_format="onnx", threads=1)
    x = np.random.default_rng(0).random((7, 1, 8, 8), dtype=np.float32)
    batched = runner.run(x)
    one_by_one = np.concatenate([runner.run(x[i : i + 1]) for i in range(7)])
    assert batched.shape == (7, 10)
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_garbage_model_bytes_are_a_load_error(fmt):
    if fmt == "tflite":
        pytest.importorskip("ai_edge_litert")
    with pytest.raises(ModelLoadError, match="cannot load this model"):
        load_runner(model=b"\x00garbage" * 10, model_format=fmt)


def test_missing_litert_says_which_package_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)  # import now fails
    with pytest.raises(RuntimeUnavailableError, match=r"fedfleet\[litert\].*not tflite-runtime"):
        load_runner(model=b"x", model_format="tflite")


def test_bad_runner_arguments_are_refused():
    with pytest.raises(ValueError, match="unknown model format 'pt'"):
        load_runner(model=b"x", model_format="pt")
    with pytest.raises(ValueError, match="threads"):
        load_runner(model=b"x", model_format="onnx", threads=0)


def test_tflite_int8_runner_quantizes_io_and_pads_batches(rpi4_build):
    runner = load_runner(model=_model_of(rpi4_build), model_format="tflite", threads=1)
    assert isinstance(runner, TFLiteRunner)
    x = np.random.default_rng(1).random((5, 1, 8, 8), dtype=np.float32)
    batched = runner.run(x)  # a batch-1 model run over 5 samples
    one_by_one = np.concatenate([runner.run(x[i : i + 1]) for i in range(5)])
    assert batched.shape == (5, 10) and batched.dtype == np.float32
    np.testing.assert_array_equal(batched, one_by_one)
    assert "ai-edge-litert" in runner.description
    assert self_test(rpi4_build.manifest, runner).max_abs_diff <= rpi4_build.manifest.reference.atol


def _model_of(build_result) -> bytes:
    from firmware_images.bundle import read_bundle

    return read_bundle(build_result.path.read_bytes()).model
