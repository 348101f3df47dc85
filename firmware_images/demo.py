"""Small signed int8 bundles built without torch, for demos, simulations and benchmarks.

The model is a static-QDQ int8 linear classifier (``QuantizeLinear`` → ``DequantizeLinear``
→ ``MatMul`` with int8 weights → ``Add``), the same operator pattern onnxruntime's static
quantizer writes, built directly with ``onnx.helper`` so that a 20-device demo or a
1,000-device benchmark needs neither a training run nor the export toolchain. Real
bundles come from ``fedfleet image build``; both are verified and run the same way.

``pad_to`` grows the bundle to a given size with an unused initializer (to measure
transfers of realistic sizes); ``break_self_test`` signs a manifest whose expected
output is wrong, which is how a bad model looks to a device: it verifies and then fails
its self-test.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from firmware_images.bundle import pack_bundle
from firmware_images.keys import key_id
from firmware_images.manifest import (
    AccuracyRecord,
    Manifest,
    ModelFile,
    ReferenceCheck,
    RuntimeSpec,
    SourceRecord,
    TensorSpec,
    default_release,
)
from firmware_images.runtime import load_runner


@dataclass(frozen=True)
class DemoBundle:
    """Bundle bytes and what they hold."""

    data: bytes
    manifest: Manifest
    features: int
    classes: int

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def int8_linear_onnx(*, features: int, classes: int, seed: int, pad_bytes: int = 0) -> bytes:
    """ONNX bytes of a QDQ int8 linear classifier (weights drawn from ``seed``)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weights = rng.integers(-100, 100, size=(features, classes), dtype=np.int8)
    bias = rng.normal(size=classes).astype(np.float32)
    inits = [
        numpy_helper.from_array(np.array(0.05, np.float32), "x_scale"),
        numpy_helper.from_array(np.array(0, np.int8), "x_zero"),
        numpy_helper.from_array(weights, "w_q"),
        numpy_helper.from_array(np.array(0.01, np.float32), "w_scale"),
        numpy_helper.from_array(np.array(0, np.int8), "w_zero"),
        numpy_helper.from_array(bias, "bias"),
    ]
    if pad_bytes > 0:
        inits.append(
            numpy_helper.from_array(rng.integers(0, 255, pad_bytes, dtype=np.uint8), "padding")
        )
    nodes = [
        helper.make_node("QuantizeLinear", ["input", "x_scale", "x_zero"], ["x_q"]),
        helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zero"], ["x_dq"]),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w_dq"]),
        helper.make_node("MatMul", ["x_dq", "w_dq"], ["logits"]),
        helper.make_node("Add", ["logits", "bias"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "fedfleet-demo-int8",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, features])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [None, classes])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def build_demo_bundle(
    *,
    private_key: Ed25519PrivateKey,
    version: str,
    target: str = "cpu-x86",
    features: int = 8,
    classes: int = 3,
    seed: int = 0,
    pad_to: int = 0,
    break_self_test: bool = False,
    model_version: str | None = None,
    release: int | None = None,
    task: str = "synthetic-logreg",
    arch: str = "x86_64",
) -> DemoBundle:
    """Build and sign a demo bundle; ``pad_to`` is the approximate total size in bytes;
    ``arch`` the manifest's CPU architecture (the target's, e.g. ``aarch64`` for rpi5)."""
    if features < 1 or classes < 2:
        raise ValueError("a demo model needs at least 1 feature and 2 classes")
    model = int8_linear_onnx(features=features, classes=classes, seed=seed)
    if pad_to > len(model) + 4096:
        model = int8_linear_onnx(
            features=features, classes=classes, seed=seed, pad_bytes=pad_to - len(model) - 3072
        )
    runner = load_runner(model=model, model_format="onnx")
    x = np.linspace(-1.0, 1.0, features, dtype=np.float32).reshape(1, features)
    expected = runner.run(x)
    if break_self_test:
        expected = expected + 10.0
    manifest = Manifest(
        version=version,
        created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        task=task,
        target=target,
        arch=arch,
        runtime=RuntimeSpec(
            name="onnxruntime", min_version="1.17", providers=("CPUExecutionProvider",)
        ),
        format="onnx",
        precision="int8",
        quantization="static-qdq",
        model=ModelFile(
            file="model.onnx", sha256=hashlib.sha256(model).hexdigest(), size=len(model)
        ),
        inputs=(TensorSpec(name="input", shape=(None, features), dtype="float32"),),
        outputs=(TensorSpec(name="output", shape=(None, classes), dtype="float32"),),
        reference=ReferenceCheck(
            input_shape=(1, features),
            input=tuple(float(v) for v in x.ravel()),
            output_shape=(1, classes),
            expected_output=tuple(float(v) for v in expected.ravel()),
            atol=1e-3,
        ),
        accuracy=AccuracyRecord(
            reference=0.9,
            exported=0.9,
            drop_points=0.0,
            max_drop_points=1.0,
            heldout="synthetic",
            samples=1,
            runtime="onnxruntime",
        ),
        source=SourceRecord(checkpoint_sha256="0" * 64, model_version=model_version),
        key_id=key_id(private_key.public_key()),
        builder="fedfleet firmware_images.demo",
        opset=18,
        release=release if release is not None else default_release(),
    )
    data = pack_bundle(manifest=manifest, model=model, private_key=private_key)
    return DemoBundle(data=data, manifest=manifest, features=features, classes=classes)
