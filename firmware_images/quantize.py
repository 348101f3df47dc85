"""Reduce a model's precision: int8 ONNX (static QDQ), int8 TFLite, fp16 ONNX (build side).

int8 is *static*: weights and activations are int8 with scales fixed ahead of time from a
calibration set, so devices run integer kernels end to end. Dynamic int8 is not offered:
on convolutions it measured 3–5× slower than static QDQ here, and its models fail to load
on onnxruntime 1.23, the newest for JetPack 6's Python 3.10 (see DESIGN.md).

- ONNX: onnxruntime's ``quantize_static`` in QDQ format (QuantizeLinear/DequantizeLinear
  pairs, standard ONNX ops that TensorRT and every onnxruntime provider read), per-channel
  weights, after ``quant_pre_process`` (shape inference and graph clean-up).
- TFLite: the LiteRT quantizer (``ai-edge-quantizer``) with its ``static_wi8_ai8`` recipe;
  the result has int8 inputs and outputs, which :mod:`firmware_images.runtime` quantizes
  and dequantizes.
- fp16: onnxruntime's float16 converter with float32 inputs and outputs kept.

Calibration data: :func:`calibration_set` draws ``n`` samples, without replacement and
with a fixed seed, from the task's TRAINING split; the held-out (test) split that the
accuracy gate measures is never used for calibration.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from firmware_images.export import TFLITE_INSTALL, ExportError, finalize_onnx, quiet
from tasks import Dataset

CALIBRATION_BATCH = 32


def calibration_set(dataset: Dataset, *, samples: int, seed: int = 0) -> np.ndarray:
    """``samples`` training inputs drawn without replacement with ``seed`` (all if fewer)."""
    if samples < 1:
        raise ValueError("calibration needs at least one sample")
    n = len(dataset.x_train)
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(n, size=min(samples, n), replace=False))
    return np.ascontiguousarray(dataset.x_train[idx], dtype=np.float32)


def quantize_onnx_static(
    model: bytes,
    calibration: np.ndarray,
    *,
    per_channel: bool = True,
    activation_type: str = "int8",
    calibrate_method: str = "minmax",
) -> bytes:
    """Static QDQ int8 of a float ONNX model, calibrated on ``calibration`` (float32 batch)."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if len(calibration) == 0:
        raise ValueError("calibration set is empty")
    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    activations = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    if calibrate_method not in methods or activation_type not in activations:
        raise ValueError("calibrate_method or activation_type not supported")
    proto = onnx.load_from_string(model)
    input_name = proto.graph.input[0].name
    fixed_batch = _fixed_batch(proto)

    class _Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._batches = _batches(calibration, fixed_batch or CALIBRATION_BATCH, fixed_batch)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {input_name: batch}

    with tempfile.TemporaryDirectory(prefix="fedfleet-quant-") as folder:
        src, pre, dst = (Path(folder) / n for n in ("float.onnx", "pre.onnx", "int8.onnx"))
        src.write_bytes(model)
        with quiet() as log:
            try:
                quant_pre_process(str(src), str(pre), skip_symbolic_shape=False)
                quantize_static(
                    str(pre),
                    str(dst),
                    _Reader(),
                    quant_format=QuantFormat.QDQ,
                    per_channel=per_channel,
                    activation_type=activations[activation_type],
                    weight_type=QuantType.QInt8,
                    calibrate_method=methods[calibrate_method],
                )
            except Exception as err:
                raise ExportError(
                    f"onnxruntime static quantization failed: {_first_line(err)}{log.tail()}"
                ) from None
        return finalize_onnx(dst.read_bytes())


def convert_onnx_fp16(model: bytes) -> bytes:
    """The fp16 version of a float32 ONNX model, keeping float32 inputs and outputs."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with quiet():
        converted = convert_float_to_float16(onnx.load_from_string(model), keep_io_types=True)
    return finalize_onnx(converted.SerializeToString())


def quantize_tflite_static(model: bytes, calibration: np.ndarray) -> bytes:
    """Static int8 (weights and activations) of a float TFLite model via ai-edge-quantizer."""
    if len(calibration) == 0:
        raise ValueError("calibration set is empty")
    with quiet() as log:
        try:
            from ai_edge_litert.interpreter import Interpreter
            from ai_edge_quantizer import quantizer, recipe
        except ImportError:
            raise ExportError(
                "TFLite int8 (rpi4 and other TFLite targets) needs ai-edge-quantizer, which "
                f"is not installed; {TFLITE_INSTALL}"
            ) from None
        try:
            signatures = Interpreter(model_content=model).get_signature_list()
            signature = next(iter(signatures))
            input_name = signatures[signature]["inputs"][0]
            batch = int(Interpreter(model_content=model).get_input_details()[0]["shape"][0])
            samples = [{input_name: b} for b in _batches(calibration, batch, fixed_batch=batch)]
            qt = quantizer.Quantizer(bytearray(model))
            qt.load_quantization_recipe(recipe.static_wi8_ai8())
            result = qt.calibrate({signature: samples}, num_threads=1)
            quantized = qt.quantize(result, enable_progress_report=False).quantized_model
        except Exception as err:
            raise ExportError(
                f"LiteRT int8 quantization failed: {_first_line(err)}{log.tail()}"
            ) from None
    if quantized is None:
        raise ExportError("LiteRT int8 quantization returned no model")
    return bytes(quantized)


def _fixed_batch(proto: object) -> int | None:
    dim = proto.graph.input[0].type.tensor_type.shape.dim[0]  # type: ignore[attr-defined]
    return int(dim.dim_value) if dim.HasField("dim_value") else None


def _batches(x: np.ndarray, size: int, fixed_batch: int | None) -> Iterator[np.ndarray]:
    for i in range(0, len(x), size):
        chunk = np.ascontiguousarray(x[i : i + size], dtype=np.float32)
        if fixed_batch is not None and len(chunk) < fixed_batch:
            continue  # a fixed-batch model cannot take the short last chunk
        yield chunk


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else type(err).__name__
