"""Model artifact files: content-addressed storage on disk and signature checks.

Files are stored as ``<artifact_dir>/<sha256[:2]>/<sha256>``. An upload is streamed to a
temporary file in the same directory while its SHA-256 is computed, flushed to disk, and
renamed into place, so a crash never leaves a half-written artifact under its final
name, and identical uploads share one file.
"""

from __future__ import annotations

import base64
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

_CHUNK = 1024 * 1024


@dataclass(frozen=True, slots=True)
class StoredFile:
    """Result of :meth:`ArtifactStore.save`."""

    sha256: str
    size_bytes: int
    created: bool  # False when an identical file was already stored


class ArtifactStore:
    """Content-addressed artifact files under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path_for(self, sha256: str) -> Path:
        """Where the file with this digest lives (whether or not it exists)."""
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError(f"not a SHA-256 hex digest: {sha256!r}")
        return self.root / sha256[:2] / sha256

    def save(self, source: BinaryIO, *, max_bytes: int) -> StoredFile:
        """Copy ``source`` into the store.

        Raises:
            ValueError: the file is empty or longer than ``max_bytes``.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        size = 0
        handle, temp_name = tempfile.mkstemp(dir=self.root, prefix=".upload-")
        temp_path = Path(temp_name)
        try:
            with os.fdopen(handle, "wb") as out:
                while chunk := source.read(_CHUNK):
                    size += len(chunk)
                    if size > max_bytes:
                        raise ValueError(f"artifact is larger than the limit of {max_bytes} bytes")
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if size == 0:
                raise ValueError("the uploaded artifact is empty; send the file's bytes")
            sha256 = digest.hexdigest()
            final = self.path_for(sha256)
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.exists():
                temp_path.unlink()
                return StoredFile(sha256=sha256, size_bytes=size, created=False)
            os.replace(temp_path, final)
            return StoredFile(sha256=sha256, size_bytes=size, created=True)
        except BaseException:
            temp_path.unlink(missing_ok=True)
            raise

    def discard(self, sha256: str) -> None:
        """Remove a stored file (after the database refused the artifact row)."""
        self.path_for(sha256).unlink(missing_ok=True)


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Read an Ed25519 public key from a PEM file.

    Raises:
        ValueError: the file is not an Ed25519 public key in PEM format.
    """
    try:
        key = load_pem_public_key(path.read_bytes())
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path} is not a PEM public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path} holds a {type(key).__name__}, not an Ed25519 public key")
    return key


def signature_valid(key: Ed25519PublicKey, *, signature_b64: str, sha256_hex: str) -> bool:
    """True when ``signature_b64`` is ``key``'s Ed25519 signature of the 32-byte digest."""
    try:
        key.verify(base64.b64decode(signature_b64), bytes.fromhex(sha256_hex))
    except (InvalidSignature, ValueError):
        return False
    return True
