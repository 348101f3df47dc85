"""The signed bundle: one file holding a manifest, its Ed25519 signature and the model.

A bundle is a ZIP archive (``unzip -l`` lists it) with exactly three *stored*
(uncompressed) members, in this order, laid out byte for byte as
:mod:`firmware_images.bundle_layout` defines (so a signed bundle has one SHA-256):

``manifest.json``
    the canonical manifest (:mod:`firmware_images.manifest`), which pins the model's
    size and SHA-256;
``manifest.sig``
    64 bytes: Ed25519 over ``SIGNING_CONTEXT + manifest.json`` (the context string
    keeps a bundle signature from ever being valid for anything else);
``model.onnx`` or ``model.tflite``
    the model.

:func:`verify_bundle` refuses, with a typed :class:`~firmware_images.errors.BundleError`,
anything but that: a truncated file, extra or duplicated members, compressed members,
bytes appended after the archive, any container byte outside the canonical layout (a ZIP
comment, bytes inserted between members or before the central directory, extra fields,
other timestamps or attributes), a manifest signed by another key or changed after
signing, a model whose bytes differ from the pinned hash, a bundle for another target,
a model over the size limit. It only reads: nothing is written unless the caller writes
the verified model with :meth:`VerifiedBundle.write_model`, which is atomic.

Imports only ``cryptography`` and the standard library (device side).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from firmware_images.bundle_layout import check_layout
from firmware_images.bundle_layout import pack as pack_layout
from firmware_images.errors import (
    BundleFormatError,
    BundleTooLargeError,
    ModelIntegrityError,
    SignatureError,
    TargetMismatchError,
    WrongKeyError,
)
from firmware_images.keys import key_id
from firmware_images.manifest import (
    MAX_MANIFEST_BYTES,
    MODEL_FILE_NAMES,
    Manifest,
    parse_manifest,
    to_canonical_bytes,
)

MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"
SIGNATURE_BYTES = 64
SIGNING_CONTEXT = b"fedfleet bundle manifest v1\x00"
DEFAULT_MAX_BUNDLE_BYTES = 512 * 1024 * 1024


@dataclass(frozen=True)
class RawBundle:
    """The three members of a bundle, read from a well-formed container, NOT yet verified."""

    manifest_bytes: bytes
    signature: bytes
    model_name: str
    model: bytes


@dataclass(frozen=True)
class VerifiedBundle:
    """A bundle whose signature, model hash and target were all checked."""

    manifest: Manifest
    model: bytes
    key_id: str

    def write_model(self, path: Path) -> None:
        """Write the verified model to ``path`` atomically (temporary file, fsync, rename)."""
        write_atomic(Path(path), self.model)


def sign_manifest(manifest_bytes: bytes, private_key: Ed25519PrivateKey) -> bytes:
    """The 64-byte Ed25519 signature of canonical manifest bytes."""
    return private_key.sign(SIGNING_CONTEXT + manifest_bytes)


def pack_bundle(*, manifest: Manifest, model: bytes, private_key: Ed25519PrivateKey) -> bytes:
    """Sign ``manifest`` and pack it with ``model`` into bundle bytes.

    Refuses a manifest that does not pin ``model`` (size and SHA-256) or that names
    another key than ``private_key``.
    """
    if manifest.model.size != len(model) or manifest.model.sha256 != sha256_hex(model):
        raise ValueError("manifest.model does not match the model bytes; rebuild the manifest")
    if manifest.key_id != key_id(private_key.public_key()):
        raise ValueError(
            f"manifest.key_id {manifest.key_id} is not the id of the signing key "
            f"{key_id(private_key.public_key())}"
        )
    manifest_bytes = to_canonical_bytes(manifest)
    signature = sign_manifest(manifest_bytes, private_key)
    return pack_layout(
        [(MANIFEST_NAME, manifest_bytes), (SIGNATURE_NAME, signature), (manifest.model.file, model)]
    )


def read_bundle(data: bytes, *, max_bytes: int = DEFAULT_MAX_BUNDLE_BYTES) -> RawBundle:
    """Check the container and return its members. Verifies NO signature or hash."""
    if len(data) > max_bytes:
        raise BundleTooLargeError(
            f"bundle is {len(data)} bytes, more than the {max_bytes} allowed; "
            "check the file or raise the limit"
        )
    if not data.startswith(b"PK\x03\x04"):
        raise BundleFormatError(
            "not a fedfleet bundle (no ZIP header); build one with: fedfleet image build"
        )
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except Exception:  # zipfile raises many types on hostile input; all mean "damaged"
        raise BundleFormatError(
            "bundle is truncated or damaged (its ZIP directory is unreadable); download it again"
        ) from None
    with archive:
        infos = archive.infolist()
        names = [info.filename for info in infos]
        if len(infos) != 3 or names[:2] != [MANIFEST_NAME, SIGNATURE_NAME]:
            raise BundleFormatError(
                f"bundle must hold exactly {MANIFEST_NAME}, {SIGNATURE_NAME} and one model, "
                f"in that order; it holds {names}"
            )
        model_name = names[2]
        if model_name not in MODEL_FILE_NAMES.values():
            raise BundleFormatError(
                f"unknown model member {model_name!r}; expected one of "
                f"{sorted(MODEL_FILE_NAMES.values())}"
            )
        for info in infos:
            if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
                raise BundleFormatError(
                    f"member {info.filename} is compressed or encrypted; bundles store members "
                    "as is — rebuild it with fedfleet image build"
                )
        if infos[0].header_offset != 0 or _archive_length(archive, infos) != len(data):
            raise BundleFormatError(
                "bundle has bytes before or after the archive; download it again"
            )
        if infos[0].file_size > MAX_MANIFEST_BYTES:
            raise BundleFormatError(f"{MANIFEST_NAME} is larger than {MAX_MANIFEST_BYTES} bytes")
        if infos[1].file_size != SIGNATURE_BYTES:
            raise BundleFormatError(
                f"{SIGNATURE_NAME} must be {SIGNATURE_BYTES} bytes (Ed25519), "
                f"it is {infos[1].file_size}"
            )
        manifest_bytes = _read_member(archive, MANIFEST_NAME)
        signature = _read_member(archive, SIGNATURE_NAME)
        model = _read_member(archive, model_name)
    members = [(MANIFEST_NAME, manifest_bytes), (SIGNATURE_NAME, signature), (model_name, model)]
    difference = check_layout(data, members)
    if difference is not None:
        raise BundleFormatError(
            f"bundle holds bytes its signature does not cover ({difference}: a ZIP comment, "
            "inserted bytes, extra fields or other headers); use the bundle fedfleet image "
            "build wrote, byte for byte"
        )
    return RawBundle(
        manifest_bytes=manifest_bytes, signature=signature, model_name=model_name, model=model
    )


def verify_bundle(
    source: Path | bytes,
    *,
    public_key: Ed25519PublicKey,
    target: str | None = None,
    max_bytes: int = DEFAULT_MAX_BUNDLE_BYTES,
    max_model_bytes: int | None = None,
) -> VerifiedBundle:
    """Verify a bundle completely and return its manifest and model.

    Checks, in order: container well-formed (:func:`read_bundle`); signature made by
    ``public_key`` over the exact manifest bytes; manifest valid; ``target`` (when given)
    equals the manifest's; model size within ``max_model_bytes`` (when given) and equal
    to the pinned size; model SHA-256 equal to the pinned one. Raises a
    :class:`~firmware_images.errors.BundleError` subclass at the first failure.
    """
    data = load_bundle_bytes(source, max_bytes=max_bytes)
    raw = read_bundle(data, max_bytes=max_bytes)
    expected_key = key_id(public_key)
    try:
        public_key.verify(raw.signature, SIGNING_CONTEXT + raw.manifest_bytes)
    except InvalidSignature:
        claimed = _claimed_key_id(raw.manifest_bytes)
        if claimed is not None and claimed != expected_key:
            raise WrongKeyError(
                f"bundle was signed by key {claimed}, not by the trusted key {expected_key}; "
                "verify with the public key of the key that built it, or rebuild it"
            ) from None
        raise SignatureError(
            "manifest signature is invalid: the manifest was modified or corrupted after "
            "signing; download the bundle again or rebuild it"
        ) from None
    manifest = parse_manifest(raw.manifest_bytes)
    if manifest.key_id != expected_key:
        raise WrongKeyError(
            f"manifest names key {manifest.key_id} but verifies with {expected_key}; rebuild it"
        )
    if target is not None and manifest.target != target:
        raise TargetMismatchError(
            f"bundle is for target {manifest.target!r}, this device is {target!r}; "
            f"build one for {target!r} with: fedfleet image build --target {target}"
        )
    if raw.model_name != manifest.model.file:
        raise BundleFormatError(
            f"bundle holds {raw.model_name} but its manifest declares {manifest.model.file}"
        )
    if max_model_bytes is not None and len(raw.model) > max_model_bytes:
        raise BundleTooLargeError(
            f"model is {len(raw.model)} bytes, over this target's limit of {max_model_bytes}"
        )
    if len(raw.model) != manifest.model.size or sha256_hex(raw.model) != manifest.model.sha256:
        raise ModelIntegrityError(
            f"{raw.model_name} does not match the SHA-256 pinned by the signed manifest: it "
            "was modified or corrupted; download the bundle again"
        )
    return VerifiedBundle(manifest=manifest, model=raw.model, key_id=expected_key)


def inspect_bundle(source: Path | bytes, *, max_bytes: int = DEFAULT_MAX_BUNDLE_BYTES) -> Manifest:
    """Read a bundle's manifest WITHOUT checking its signature (for display only)."""
    raw = read_bundle(load_bundle_bytes(source, max_bytes=max_bytes), max_bytes=max_bytes)
    return parse_manifest(raw.manifest_bytes)


def load_bundle_bytes(source: Path | bytes, *, max_bytes: int = DEFAULT_MAX_BUNDLE_BYTES) -> bytes:
    """The bytes of a bundle file (size-checked before reading) or the bytes given."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    path = Path(source)
    if not path.is_file():
        raise BundleFormatError(f"bundle file {path} not found; check the path")
    size = path.stat().st_size
    if size > max_bytes:
        raise BundleTooLargeError(
            f"bundle {path} is {size} bytes, more than the {max_bytes} allowed"
        )
    return path.read_bytes()


def sha256_hex(data: bytes) -> str:
    """Lower-case hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one."""
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"folder {path.parent} does not exist")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _read_member(archive: zipfile.ZipFile, name: str) -> bytes:
    try:
        return archive.read(name)
    except Exception:  # CRC mismatch, bad local header, unsupported feature...
        if name in (MANIFEST_NAME, SIGNATURE_NAME):
            raise SignatureError(
                f"{name} is damaged (checksum mismatch): the bundle was modified or corrupted; "
                "download it again"
            ) from None
        raise ModelIntegrityError(
            f"{name} is damaged (checksum mismatch): the bundle was modified or corrupted; "
            "download it again"
        ) from None


def _archive_length(archive: zipfile.ZipFile, infos: list[zipfile.ZipInfo]) -> int:
    # Where the archive must end: the central directory (one record per member), then
    # the 22-byte end record and its comment. Anything else is appended data.
    central = sum(
        46 + len(info.orig_filename.encode("utf-8")) + len(info.extra) + len(info.comment)
        for info in infos
    )
    start_dir: int = getattr(archive, "start_dir", -1)
    return start_dir + central + 22 + len(archive.comment)


def _claimed_key_id(manifest_bytes: bytes) -> str | None:
    # Only to word the error: which key the (unverified) manifest says it was signed by.
    try:
        value = json.loads(manifest_bytes).get("key_id")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None
