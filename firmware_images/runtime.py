"""Run a bundle's model on this machine: load it, infer, and self-test it.

Two runtimes, one interface (:class:`ModelRunner`): ``onnxruntime`` for ONNX models
(execution providers taken in the manifest's order among those installed, CPU last) and
``ai-edge-litert`` for TFLite models (imported only when a TFLite model is loaded; the
``litert`` extra installs it). Both take float32 batches and return float32 outputs:
a fully integer TFLite model's int8 input and output are quantized and dequantized here
with the model's own scale and zero point.

The self-test runs the manifest's reference input and compares the output with the
expected one within the manifest's tolerance; a device runs it before switching to a
new model.

Imports only ``numpy``, ``onnxruntime`` and (lazily) ``ai_edge_litert`` (device side).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from firmware_images.errors import ModelLoadError, RuntimeUnavailableError, SelfTestError
from firmware_images.manifest import Manifest


class ModelRunner(Protocol):
    """A loaded model: ``run`` maps a float32 batch to the float32 first output."""

    @property
    def description(self) -> str:
        """Runtime, version and provider actually used (for reports)."""
        ...

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Outputs for ``batch`` (shape ``(n, *input_shape)``), shape ``(n, *output_shape)``."""
        ...


@dataclass(frozen=True)
class SelfTestResult:
    """Outcome of a passed self-test: the largest absolute output difference and the bound."""

    max_abs_diff: float
    atol: float
    runner: str


class OnnxRunner:
    """An onnxruntime ``InferenceSession`` over model bytes."""

    def __init__(
        self, model: bytes, *, threads: int = 1, providers: Sequence[str] | None = None
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError as err:  # pragma: no cover - onnxruntime is a base dependency
            raise RuntimeUnavailableError(
                "this model needs onnxruntime: pip install onnxruntime (or onnxruntime-gpu)"
            ) from err
        available = ort.get_available_providers()
        wanted = list(providers or ["CPUExecutionProvider"])
        chosen = [p for p in wanted if p in available] or ["CPUExecutionProvider"]
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(model, options, providers=chosen)
        except Exception as err:  # onnxruntime raises its own exception types
            raise ModelLoadError(
                f"onnxruntime {ort.__version__} cannot load this model: {_first_line(err)}"
            ) from None
        self._input = self._session.get_inputs()[0]
        self._batch = self._input.shape[0] if isinstance(self._input.shape[0], int) else None
        self._description = (
            f"onnxruntime {ort.__version__} ({self._session.get_providers()[0]}, {threads} thread"
            f"{'s' if threads != 1 else ''})"
        )

    @property
    def description(self) -> str:
        return self._description

    @property
    def input_name(self) -> str:
        """Name of the model's first input."""
        return str(self._input.name)

    def run(self, batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(batch, dtype=np.float32)
        if self._batch is not None and len(x) != self._batch:
            return _in_chunks(self._run, x, self._batch)
        return self._run(x)

    def _run(self, x: np.ndarray) -> np.ndarray:
        try:
            out = self._session.run(None, {self._input.name: x})[0]
        except Exception as err:
            raise ModelLoadError(
                f"onnxruntime failed to run the model: {_first_line(err)}"
            ) from None
        return np.asarray(out, dtype=np.float32)


class TFLiteRunner:
    """An ai-edge-litert ``Interpreter`` over model bytes (fixed batch, int8 I/O handled)."""

    def __init__(self, model: bytes, *, threads: int = 1) -> None:
        try:
            from ai_edge_litert import interpreter as litert
        except ImportError:
            raise RuntimeUnavailableError(
                "this model is TFLite and needs ai-edge-litert: pip install 'fedfleet[litert]' "
                "(not tflite-runtime, which needs numpy<2 and has no aarch64 wheel for "
                "Python >= 3.11)"
            ) from None
        try:
            self._interp = litert.Interpreter(model_content=bytes(model), num_threads=threads)
            self._interp.allocate_tensors()
        except Exception as err:
            raise ModelLoadError(
                f"ai-edge-litert cannot load this model: {_first_line(err)}"
            ) from None
        self._in = self._interp.get_input_details()[0]
        self._out = self._interp.get_output_details()[0]
        self._batch = int(self._in["shape"][0])
        self._quantize = _Quantizer.of(self._in)
        self._dequantize = _Quantizer.of(self._out)
        self._out_shape = tuple(int(d) for d in self._out["shape"][1:])
        version = getattr(litert, "__version__", None) or _package_version("ai-edge-litert")
        self._description = (
            f"ai-edge-litert {version} ({threads} thread{'s' if threads != 1 else ''})"
        )

    @property
    def description(self) -> str:
        return self._description

    def run(self, batch: np.ndarray) -> np.ndarray:
        # Quantize the whole batch once, invoke the fixed-batch model chunk by chunk into
        # one preallocated output, dequantize once: per-call numpy work stays constant.
        x = np.asarray(batch, dtype=np.float32)
        n, b = len(x), self._batch
        if n % b:
            x = np.concatenate([x, np.zeros((b - n % b, *x.shape[1:]), dtype=np.float32)])
        q_in = self._quantize.to_model(x) if self._quantize else np.ascontiguousarray(x)
        q_out = np.empty((len(x), *self._out_shape), dtype=self._out["dtype"])
        for i in range(0, len(x), b):
            self._interp.set_tensor(self._in["index"], q_in[i : i + b])
            self._interp.invoke()
            q_out[i : i + b] = self._interp.get_tensor(self._out["index"])
        y = q_out[:n]
        return self._dequantize.from_model(y) if self._dequantize else y


def load_runner(
    *,
    model: bytes,
    model_format: str,
    threads: int = 1,
    providers: Sequence[str] | None = None,
) -> ModelRunner:
    """Load ``model`` with the runtime for ``model_format`` (``onnx`` or ``tflite``)."""
    if threads < 1:
        raise ValueError("threads must be at least 1")
    if model_format == "onnx":
        return OnnxRunner(model, threads=threads, providers=providers)
    if model_format == "tflite":
        return TFLiteRunner(model, threads=threads)
    raise ValueError(f"unknown model format {model_format!r}; expected onnx or tflite")


def runner_for(manifest: Manifest, model: bytes, *, threads: int = 1) -> ModelRunner:
    """Load a verified bundle's model as its manifest says (format, providers)."""
    return load_runner(
        model=model,
        model_format=manifest.format,
        threads=threads,
        providers=manifest.runtime.providers or None,
    )


def self_test(manifest: Manifest, runner: ModelRunner) -> SelfTestResult:
    """Run the manifest's reference input; raise :class:`SelfTestError` if the output differs.

    Passing means the model loads, accepts the declared input shape and reproduces the
    output it had at build time within ``manifest.reference.atol`` per value.
    """
    ref = manifest.reference
    x = np.asarray(ref.input, dtype=np.float32).reshape(ref.input_shape)
    expected = np.asarray(ref.expected_output, dtype=np.float32).reshape(ref.output_shape)
    got = runner.run(x)
    if got.shape != expected.shape:
        raise SelfTestError(
            f"self-test output has shape {got.shape}, the manifest expects {expected.shape}; "
            "the model does not match its manifest — keep the previous model"
        )
    if not np.all(np.isfinite(got)):
        raise SelfTestError("self-test output holds NaN or infinity; keep the previous model")
    diff = float(np.max(np.abs(got - expected)))
    if diff > ref.atol:
        raise SelfTestError(
            f"self-test output differs from the expected output by {diff:.3g} "
            f"(allowed {ref.atol:.3g}) on {runner.description}; keep the previous model"
        )
    return SelfTestResult(max_abs_diff=diff, atol=ref.atol, runner=runner.description)


def predict_classes(runner: ModelRunner, x: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
    """Arg-max class of each sample of ``x``, run in batches of ``batch_size``."""
    preds = [runner.run(x[i : i + batch_size]).argmax(axis=1) for i in range(0, len(x), batch_size)]
    return np.concatenate(preds) if preds else np.zeros(0, dtype=np.int64)


def accuracy(runner: ModelRunner, x: np.ndarray, y: np.ndarray) -> float:
    """Fraction of samples of ``x`` whose predicted class equals ``y`` (in [0, 1])."""
    if len(x) == 0:
        raise ValueError("cannot measure accuracy on an empty set")
    return float(np.mean(predict_classes(runner, x) == y))


def _in_chunks(run: Any, x: np.ndarray, batch: int) -> np.ndarray:
    outs = []
    for i in range(0, len(x), batch):
        chunk = x[i : i + batch]
        if len(chunk) < batch:  # pad the last chunk to the model's fixed batch
            pad = np.zeros((batch - len(chunk), *chunk.shape[1:]), dtype=chunk.dtype)
            outs.append(run(np.concatenate([chunk, pad]))[: len(chunk)])
        else:
            outs.append(run(chunk))
    return np.concatenate(outs)


@dataclass(frozen=True)
class _Quantizer:
    """Affine int8/uint8 <-> float32 mapping of one quantized model tensor.

    ``real = (q - zero_point) * scale`` (TFLite's convention). Parameters are read once
    at load time; per call it is one multiply-add, round and clip.
    """

    dtype: np.dtype
    scale: np.float32
    inv_scale: np.float32
    zero_point: np.float32
    low: np.float32
    high: np.float32

    @staticmethod
    def of(detail: dict[str, Any]) -> _Quantizer | None:
        dtype = np.dtype(detail["dtype"])
        if dtype == np.float32:
            return None
        scale, zero_point = detail["quantization"]
        if not scale or dtype.kind not in "iu":
            raise ModelLoadError(
                f"model tensor {detail.get('name')} is {dtype} without quantization parameters"
            )
        info = np.iinfo(dtype)
        return _Quantizer(
            dtype=dtype,
            scale=np.float32(scale),
            inv_scale=np.float32(1.0 / scale),
            zero_point=np.float32(zero_point),
            low=np.float32(info.min),
            high=np.float32(info.max),
        )

    def to_model(self, x: np.ndarray) -> np.ndarray:
        # In place, and maximum/minimum rather than np.clip: on a 64-value input np.clip's
        # dispatch alone costs more than the model's int8 invoke.
        q = x * self.inv_scale
        np.rint(q, out=q)
        q += self.zero_point
        np.maximum(q, self.low, out=q)
        np.minimum(q, self.high, out=q)
        return q.astype(self.dtype)

    def from_model(self, q: np.ndarray) -> np.ndarray:
        y = q.astype(np.float32)
        y -= self.zero_point
        y *= self.scale
        return y


def _package_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "?"


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else type(err).__name__
