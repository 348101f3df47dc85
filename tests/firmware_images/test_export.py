"""Export and quantization against the real runtimes (onnxruntime, ai-edge-litert)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from firmware_images_testkit import require_tflite

from firmware_images.bundle import read_bundle, verify_bundle
from firmware_images.export import (
    CheckpointError,
    export_onnx,
    export_tflite,
    load_checkpoint,
    onnx_opset,
)
from firmware_images.keys import load_public_key
from firmware_images.quantize import calibration_set
from firmware_images.runtime import accuracy, load_runner
from tasks import get_task, train_local

pytestmark = pytest.mark.slow


def _torch_outputs(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def _torch_accuracy(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(_torch_outputs(model, x).argmax(axis=1) == y))


@pytest.fixture(scope="module")
def digits(digits_checkpoint):
    task = get_task("digits-cnn")
    return task, load_checkpoint(task, digits_checkpoint), task.load_data(0)


def test_fp32_onnx_matches_pytorch_on_the_test_inputs(digits):
    task, model, data = digits
    onnx_bytes = export_onnx(model, sample=data.x_test[:2], opset=18, dynamic_batch=True)
    runner = load_runner(model=onnx_bytes, model_format="onnx")
    diff = np.abs(runner.run(data.x_test) - _torch_outputs(model, data.x_test)).max()
    assert diff <= 1e-4
    proto = onnx.load_from_string(onnx_bytes)
    assert onnx_opset(onnx_bytes) == 18
    assert proto.ir_version == 8  # the lowest IR that opset 18 needs: older runtimes load it
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch
    assert runner.run(data.x_test[:1]).shape == (1, task.num_classes)
    again = export_onnx(model, sample=data.x_test[:2], opset=18, dynamic_batch=True)
    assert again == onnx_bytes  # reproducible: the same weights give the same bytes


def test_fp32_onnx_of_an_mlp_with_a_fixed_batch_matches_pytorch():
    torch.manual_seed(0)
    task = get_task("breast-cancer-mlp")
    data = task.load_data(0)
    model = task.build_model()
    train_local(
        model, data.x_train, data.y_train, epochs=2, batch_size=16, learning_rate=0.05, seed=0
    )
    model.eval()
    onnx_bytes = export_onnx(model, sample=data.x_test[:1], opset=18, dynamic_batch=False)
    dim = onnx.load_from_string(onnx_bytes).graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.dim_value == 1
    runner = load_runner(model=onnx_bytes, model_format="onnx")
    got = runner.run(data.x_test)  # run sample by sample by the runner
    assert np.abs(got - _torch_outputs(model, data.x_test)).max() <= 1e-4


def test_int8_onnx_bundle_is_int8_and_within_the_gate(cpu_bundle, signing_key, digits):
    _, model, data = digits
    verified = verify_bundle(cpu_bundle, public_key=load_public_key(signing_key.public))
    proto = onnx.load_from_string(verified.model)
    ops = {node.op_type for node in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert {o.domain for o in proto.opset_import} <= {"", "ai.onnx"}  # standard ops only
    weights = [t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert sum(np.prod(t.dims) for t in weights) > 30_000  # the conv/linear weights are int8
    # Re-measure with the real runtime, independently of the builder's own numbers.
    runner = load_runner(model=verified.model, model_format="onnx")
    exported = accuracy(runner, data.x_test, data.y_test)
    reference = _torch_accuracy(model, data.x_test, data.y_test)
    assert reference >= 0.85  # the checkpoint learned something
    assert 100 * (reference - exported) <= 1.0
    assert verified.manifest.accuracy.exported == pytest.approx(exported)


def test_fp32_tflite_matches_pytorch(digits):
    require_tflite()
    _, model, data = digits
    tflite = export_tflite(model, sample=data.x_test[:1])
    runner = load_runner(model=tflite, model_format="tflite")
    diff = np.abs(runner.run(data.x_test) - _torch_outputs(model, data.x_test)).max()
    assert diff <= 1e-4


def test_int8_tflite_bundle_is_int8_and_within_the_gate(rpi4_build, digits):
    from ai_edge_litert.interpreter import Interpreter

    _, model, data = digits
    tflite = read_bundle(rpi4_build.path.read_bytes()).model
    interp = Interpreter(model_content=tflite)
    assert interp.get_input_details()[0]["dtype"] == np.int8  # fully integer model
    exported = accuracy(load_runner(model=tflite, model_format="tflite"), data.x_test, data.y_test)
    reference = _torch_accuracy(model, data.x_test, data.y_test)
    assert 100 * (reference - exported) <= 1.0
    assert rpi4_build.manifest.format == "tflite" and rpi4_build.manifest.precision == "int8"


def test_calibration_comes_from_the_training_split_only():
    data = get_task("digits-cnn").load_data(0)
    calib = calibration_set(data, samples=256, seed=0)
    assert calib.shape == (256, 1, 8, 8)
    train_rows = {row.tobytes() for row in data.x_train}
    assert all(row.tobytes() in train_rows for row in calib)
    np.testing.assert_array_equal(calib, calibration_set(data, samples=256, seed=0))
    assert len(calibration_set(data, samples=10**6)) == len(data.x_train)


def test_checkpoint_errors_are_clear(tmp_path, digits_checkpoint):
    digits_task = get_task("digits-cnn")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(digits_task, tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_checkpoint(digits_task, garbage)
    whole_model = tmp_path / "whole.pt"
    torch.save(digits_task.build_model(), whole_model)  # a pickled module, not a state dict
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint|plain state dict"):
        load_checkpoint(digits_task, whole_model)
    nested = tmp_path / "nested.pt"
    torch.save({"model": digits_task.build_model().state_dict()}, nested)
    with pytest.raises(CheckpointError, match="plain state dict"):
        load_checkpoint(digits_task, nested)
    with pytest.raises(CheckpointError, match="does not fit task 'breast-cancer-mlp'"):
        load_checkpoint(get_task("breast-cancer-mlp"), digits_checkpoint)
