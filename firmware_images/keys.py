"""Ed25519 signing keys for bundles: generate, save, load, identify.

Files are PEM: the private key as unencrypted PKCS#8 (``PREFIX.key``, created with mode
0600 and refused when group or others can read it, as OpenSSH does), the public key as
SubjectPublicKeyInfo (``PREFIX.pub``). A key is identified by its *key id*,
``ed25519:`` followed by the first 16 hex digits of the SHA-256 of the raw 32-byte public
key; the manifest records it so that a bundle signed by another key is named as such.

Ed25519: Bernstein et al., "High-speed high-security signatures", CHES 2011 (RFC 8032).
Imports only ``cryptography`` and the standard library (device side).
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from firmware_images.errors import KeyFileError

KEY_SUFFIX = ".key"
PUB_SUFFIX = ".pub"
_MAX_KEY_FILE_BYTES = 16 * 1024


@dataclass(frozen=True)
class KeyPairPaths:
    """Where :func:`generate_keypair` wrote a key pair, and the pair's key id."""

    private: Path
    public: Path
    key_id: str


def key_id(public_key: Ed25519PublicKey) -> str:
    """The short, stable identifier of ``public_key`` (``ed25519:<16 hex digits>``)."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519:" + hashlib.sha256(raw).hexdigest()[:16]


def sign_digest(private_key: Ed25519PrivateKey, sha256_hex: str) -> str:
    """Base64 Ed25519 signature of a file's 32-byte SHA-256 digest (the fleet registry's form)."""
    return base64.b64encode(private_key.sign(bytes.fromhex(sha256_hex))).decode("ascii")


def generate_keypair(*, prefix: Path, force: bool = False) -> KeyPairPaths:
    """Create a fresh Ed25519 key pair at ``PREFIX.key`` (mode 0600) and ``PREFIX.pub``.

    The key comes from the operating system's CSPRNG (``cryptography``). Existing files
    are never overwritten unless ``force``; on any failure nothing is left behind.
    """
    private_path = Path(f"{prefix}{KEY_SUFFIX}")
    public_path = Path(f"{prefix}{PUB_SUFFIX}")
    if not private_path.parent.is_dir():
        raise KeyFileError(
            f"folder {private_path.parent} does not exist; create it or choose another --out"
        )
    if not force:
        for path in (private_path, public_path):
            if path.exists():
                raise KeyFileError(
                    f"{path} already exists; choose another --out or pass --force to replace it"
                )
    private_key = Ed25519PrivateKey.generate()
    private_pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    written: list[Path] = []
    try:
        _write_new_file(private_path, private_pem, mode=0o600)
        written.append(private_path)
        _write_new_file(public_path, public_pem, mode=0o644)
        written.append(public_path)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return KeyPairPaths(
        private=private_path, public=public_path, key_id=key_id(private_key.public_key())
    )


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Load an Ed25519 private key written by :func:`generate_keypair`.

    Refuses a file that group or others can read (``chmod 600`` fixes it), a public key,
    and any key that is not Ed25519.
    """
    data = _read_key_file(path, what="private key")
    if b"PUBLIC KEY" in data:
        raise KeyFileError(f"{path} holds a public key; pass the private key (.key) to sign")
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"private key {path} is accessible by other users (mode {stat.S_IMODE(mode):04o}); "
            f"run: chmod 600 {path}"
        )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise KeyFileError(
            f"{path} is encrypted with a passphrase, which fedfleet does not support; "
            "generate a key with: fedfleet keys generate --out PREFIX"
        ) from None
    except ValueError:
        raise KeyFileError(
            f"{path} is not a PEM private key; generate one with: fedfleet keys generate --out PREFIX"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(
            f"{path} is not an Ed25519 key; fedfleet bundles are signed with Ed25519"
        )
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Load an Ed25519 public key (``PREFIX.pub``); refuses private keys and other key types."""
    data = _read_key_file(path, what="public key")
    if b"PRIVATE KEY" in data:
        raise KeyFileError(
            f"{path} holds a PRIVATE key; pass the public key ({Path(path).stem}.pub) "
            "and keep the private key off devices"
        )
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        raise KeyFileError(
            f"{path} is not a PEM public key; pass the .pub file written by fedfleet keys generate"
        ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(
            f"{path} is not an Ed25519 key; fedfleet bundles are signed with Ed25519"
        )
    return key


def _read_key_file(path: Path, *, what: str) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise KeyFileError(f"{what} file {path} not found; check the path")
    if path.stat().st_size > _MAX_KEY_FILE_BYTES:
        raise KeyFileError(f"{path} is too large to be a {what} file; check the path")
    try:
        return path.read_bytes()
    except OSError as err:
        raise KeyFileError(f"cannot read {what} file {path}: {err.strerror}") from None


def _write_new_file(path: Path, data: bytes, *, mode: int) -> None:
    # O_EXCL after an explicit unlink: the file is created with its final mode, so the
    # private key is never readable by others, not even for an instant.
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(handle.fileno(), mode)  # the umask may have removed bits; make it exact
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
