"""Small builders shared by the firmware_images tests (no torch: fast)."""

from __future__ import annotations

import dataclasses
import io
import os
import shutil
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from firmware_images.bundle import sha256_hex
from firmware_images.keys import key_id
from firmware_images.manifest import (
    AccuracyRecord,
    LatencyRecord,
    Manifest,
    ModelFile,
    ReferenceCheck,
    RuntimeSpec,
    SourceRecord,
    TensorSpec,
)

FAKE_MODEL = bytes(range(256)) * 40  # 10 KiB of non-trivial bytes


def make_manifest(
    *,
    model: bytes = FAKE_MODEL,
    key: Ed25519PrivateKey | None = None,
    target: str = "cpu-x86",
    fmt: str = "onnx",
) -> Manifest:
    """A valid manifest pinning ``model`` and naming ``key``'s id."""
    kid = key_id(key.public_key()) if key is not None else "ed25519:0123456789abcdef"
    return Manifest(
        version="ckpt-0123456789ab",
        created="2026-01-01T00:00:00Z",
        task="digits-cnn",
        target=target,
        arch="x86_64",
        runtime=RuntimeSpec(
            name="onnxruntime" if fmt == "onnx" else "ai-edge-litert",
            min_version="1.17",
            providers=("CPUExecutionProvider",) if fmt == "onnx" else (),
        ),
        format=fmt,  # type: ignore[arg-type]
        precision="int8",
        quantization="static-qdq" if fmt == "onnx" else "litert-static",
        model=ModelFile(file=f"model.{fmt}", sha256=sha256_hex(model), size=len(model)),
        inputs=(TensorSpec(name="input", shape=(None, 1, 8, 8), dtype="float32"),),
        outputs=(TensorSpec(name="output", shape=(None, 10), dtype="float32"),),
        reference=ReferenceCheck(
            input_shape=(1, 2),
            input=(0.5, -1.25),
            output_shape=(1, 3),
            expected_output=(0.1, 0.2, 0.7),
            atol=0.01,
        ),
        accuracy=AccuracyRecord(
            reference=0.95,
            exported=0.945,
            drop_points=0.5,
            max_drop_points=1.0,
            heldout="digits-cnn test split (load_data seed 0)",
            samples=360,
            runtime="onnxruntime 1.32.0 (CPUExecutionProvider, 1 thread)",
        ),
        source=SourceRecord(checkpoint_sha256="ab" * 32, model_version=None),
        key_id=kid,
        builder="fedfleet test",
        opset=18 if fmt == "onnx" else None,
        latency=LatencyRecord(
            fp32_p50_us=41.5,
            int8_p50_us=37.25,
            runs=2000,
            threads=1,
            batch=1,
            runtime="onnxruntime 1.32.0 (CPUExecutionProvider, 1 thread)",
            machine="x86_64 test CPU",
            decision="int8-faster",
        ),
    )


def replace(manifest: Manifest, **changes: object) -> Manifest:
    """``dataclasses.replace`` for nested manifest fields given as ``'model.sha256'``."""
    top: dict[str, object] = {}
    nested: dict[str, dict[str, object]] = {}
    for path, value in changes.items():
        head, _, rest = path.partition("__")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            top[head] = value
    for head, fields in nested.items():
        top[head] = dataclasses.replace(getattr(manifest, head), **fields)
    return dataclasses.replace(manifest, **top)  # type: ignore[arg-type]


def repack(members: list[tuple[str, bytes]], *, compress: int = zipfile.ZIP_STORED) -> bytes:
    """A ZIP with exactly these members (valid CRCs): to forge well-formed bad bundles."""
    out = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(out, "w") as archive:
        warnings.simplefilter("ignore")  # duplicate names are the point of some tests
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = compress
            archive.writestr(info, data)
    return out.getvalue()


def members(bundle: bytes) -> list[tuple[str, bytes]]:
    """The (name, bytes) members of a ZIP, in order."""
    with zipfile.ZipFile(io.BytesIO(bundle)) as archive:
        return [(info.filename, archive.read(info.filename)) for info in archive.infolist()]


def fedfleet_exe() -> str:
    """The installed ``fedfleet`` console script of this virtualenv."""
    exe = shutil.which("fedfleet", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.fail("the fedfleet console script is not installed (pip install -e .)")
    return exe


def run_fedfleet(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the real ``fedfleet`` command and capture its output."""
    env = {**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [fedfleet_exe(), *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=300
    )


def require_tflite() -> None:
    """Skip without litert-torch, unless FEDFLEET_REQUIRE_TFLITE=1 (CI) makes it a failure."""
    try:
        import litert_torch  # noqa: F401
    except ImportError:
        if os.environ.get("FEDFLEET_REQUIRE_TFLITE") == "1":
            pytest.fail("FEDFLEET_REQUIRE_TFLITE=1 but litert-torch is not installed")
        pytest.skip("litert-torch (the 'tflite' extra) is not installed")
