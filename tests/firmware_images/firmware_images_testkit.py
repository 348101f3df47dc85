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
from firmware_images.bundle_layout import pack as pack_layout
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
        release=1,
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
    """A ZIP with exactly these members (valid CRCs): to forge well-formed bad bundles.

    Stored members get the canonical bundle layout, so a forgery is refused for what it
    forges (its members), not for its container.
    """
    if compress == zipfile.ZIP_STORED:
        return pack_layout(members)
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


def with_comment(bundle: bytes, comment: bytes) -> bytes:
    """The same archive with a ZIP comment (the end record's length field and the text)."""
    assert bundle[-22:-18] == b"PK\x05\x06" and bundle[-2:] == b"\x00\x00"
    return bundle[:-2] + len(comment).to_bytes(2, "little") + comment


def inserted_before_directory(bundle: bytes, junk: bytes, *, fix_offset: bool = True) -> bytes:
    """``junk`` inserted between the last member and the central directory; with
    ``fix_offset`` the end record points at the moved directory (a well-formed ZIP)."""
    end = bundle[-22:]
    directory_at = int.from_bytes(end[16:20], "little")
    if fix_offset:
        end = end[:16] + (directory_at + len(junk)).to_bytes(4, "little") + end[20:]
    return bundle[:directory_at] + junk + bundle[directory_at:-22] + end


def inserted_between_members(bundle: bytes, junk: bytes) -> bytes:
    """``junk`` inserted before the model's local header, every offset fixed (a valid ZIP)."""
    with zipfile.ZipFile(io.BytesIO(bundle)) as archive:
        infos = archive.infolist()
        directory_at = archive.start_dir
    model_at = infos[2].header_offset
    directory = bytearray(bundle[directory_at:-22])
    # The third central record's local-header offset (field at byte 42 of its record).
    third = 0
    for info in infos[:2]:
        third += 46 + len(info.filename.encode())
    old = int.from_bytes(directory[third + 42 : third + 46], "little")
    directory[third + 42 : third + 46] = (old + len(junk)).to_bytes(4, "little")
    end = bytearray(bundle[-22:])
    end[16:20] = (directory_at + len(junk)).to_bytes(4, "little")
    return bundle[:model_at] + junk + bundle[model_at:directory_at] + bytes(directory) + bytes(end)


def with_extra_field(bundle: bytes) -> bytes:
    """The same members repacked by zipfile with an extra field on the model."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in members(bundle):
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            if name.startswith("model."):
                info.extra = b"\xfe\xca\x04\x00abcd"
            archive.writestr(info, data)
    return out.getvalue()


def with_other_timestamps(bundle: bytes) -> bytes:
    """The same members repacked by zipfile with another modification time."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in members(bundle):
            info = zipfile.ZipInfo(name, date_time=(2024, 5, 1, 12, 0, 0))
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)
    return out.getvalue()
