"""Key agreement and authenticated share encryption (X25519, HKDF-SHA256, AES-256-GCM).

Each client makes two fresh X25519 key pairs per round (Bonawitz et al., CCS 2017,
§4): one (``c``) whose agreed secrets encrypt the Shamir shares it sends through the
coordinator, one (``s``) whose agreed secrets seed the pairwise masks. Every derived
key is bound by HKDF to its purpose, the round and the (ordered) pair of node ids, so
no key is ever used for two things. Shares travel as AES-GCM ciphertexts whose
associated data names the round, the sender and the receiver: a ciphertext that was
altered, replayed into another round or redirected to another client fails to open.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_BYTES = 32
NONCE_BYTES = 12
PROTOCOL_LABEL = b"fedfleet-secagg-v1"

PURPOSE_SHARE = b"share-encryption"
PURPOSE_PAIR_MASK = b"pairwise-mask"
PURPOSE_SELF_MASK = b"self-mask"


class ShareAuthenticationError(Exception):
    """An encrypted share failed AES-GCM authentication (tampered, replayed, misrouted)."""


@dataclass(frozen=True)
class KeyPair:
    """Raw 32-byte X25519 private and public keys."""

    private: bytes
    public: bytes


def generate_keypair() -> KeyPair:
    """A fresh X25519 key pair from the operating system's CSPRNG."""
    sk = X25519PrivateKey.generate()
    return KeyPair(private=_raw_private(sk), public=_raw_public(sk.public_key()))


def public_key_of(private: bytes) -> bytes:
    """The X25519 public key of a raw private key (checks a reconstructed key)."""
    return _raw_public(_load_private(private).public_key())


def agree(private: bytes, peer_public: bytes) -> bytes:
    """The X25519 shared secret; ``ValueError`` for a malformed or low-order peer key."""
    if len(peer_public) != KEY_BYTES:
        raise ValueError(f"an X25519 public key is {KEY_BYTES} bytes, got {len(peer_public)}")
    peer = X25519PublicKey.from_public_bytes(peer_public)
    return _load_private(private).exchange(peer)  # raises ValueError on an all-zero result


def agree_all(private: bytes, peer_publics: Mapping[int, bytes]) -> dict[int, bytes]:
    """X25519 secrets with many peers, loading the private key once."""
    sk = _load_private(private)
    out = {}
    for peer, public in peer_publics.items():
        if len(public) != KEY_BYTES:
            raise ValueError(f"an X25519 public key is {KEY_BYTES} bytes, got {len(public)}")
        out[peer] = sk.exchange(X25519PublicKey.from_public_bytes(public))
    return out


def pair_context(*, server_round: int, a: int, b: int) -> bytes:
    """Context bytes of an unordered pair in a round (same for both ends)."""
    lo, hi = min(a, b), max(a, b)
    return struct.pack(">QQQ", server_round, lo, hi)


def derive_key(secret: bytes, *, purpose: bytes, context: bytes) -> bytes:
    """A 32-byte key for ``purpose`` from ``secret`` (HKDF-SHA256, RFC 5869)."""
    return HKDF(
        algorithm=hashes.SHA256(),
        length=KEY_BYTES,
        salt=None,
        info=PROTOCOL_LABEL + b"/" + purpose + b"/" + context,
    ).derive(secret)


def share_aad(*, server_round: int, sender: int, receiver: int) -> bytes:
    """Associated data of a share ciphertext: the direction matters."""
    return PROTOCOL_LABEL + struct.pack(">QQQ", server_round, sender, receiver)


def encrypt(key: bytes, plaintext: bytes, *, aad: bytes) -> bytes:
    """AES-256-GCM with a random 96-bit nonce; returns nonce ‖ ciphertext ‖ tag."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def decrypt(key: bytes, blob: bytes, *, aad: bytes) -> bytes:
    """Open an :func:`encrypt` blob; ``ShareAuthenticationError`` if it does not verify."""
    if len(blob) < NONCE_BYTES + 16:
        raise ShareAuthenticationError("ciphertext too short")
    try:
        return AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
    except InvalidTag:
        raise ShareAuthenticationError("share ciphertext failed authentication") from None


def _load_private(private: bytes) -> X25519PrivateKey:
    if len(private) != KEY_BYTES:
        raise ValueError(f"an X25519 private key is {KEY_BYTES} bytes, got {len(private)}")
    return X25519PrivateKey.from_private_bytes(private)


def _raw_private(sk: X25519PrivateKey) -> bytes:
    return sk.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )


def _raw_public(pk: X25519PublicKey) -> bytes:
    return pk.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
