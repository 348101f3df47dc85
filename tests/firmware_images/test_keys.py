"""Ed25519 key files: generation, permissions, loading, refusal of wrong files."""

from __future__ import annotations

import stat

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from firmware_images.errors import KeyFileError
from firmware_images.keys import generate_keypair, key_id, load_private_key, load_public_key


def test_generate_writes_private_0600_and_public(tmp_path):
    # Execute
    paths = generate_keypair(prefix=tmp_path / "fleet")
    # Assert
    assert paths.private == tmp_path / "fleet.key"
    assert paths.public == tmp_path / "fleet.pub"
    assert stat.S_IMODE(paths.private.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in paths.private.read_bytes()
    assert b"PUBLIC KEY" in paths.public.read_bytes()
    private, public = load_private_key(paths.private), load_public_key(paths.public)
    public.verify(private.sign(b"msg"), b"msg")  # the two files are one pair
    assert paths.key_id == key_id(public)
    assert paths.key_id.startswith("ed25519:") and len(paths.key_id) == len("ed25519:") + 16


def test_generate_refuses_to_overwrite_without_force(tmp_path):
    first = generate_keypair(prefix=tmp_path / "k")
    before = first.private.read_bytes()
    with pytest.raises(KeyFileError, match="already exists.*--force"):
        generate_keypair(prefix=tmp_path / "k")
    assert first.private.read_bytes() == before
    second = generate_keypair(prefix=tmp_path / "k", force=True)
    assert second.key_id != first.key_id
    assert stat.S_IMODE(second.private.stat().st_mode) == 0o600


def test_generate_into_missing_folder_writes_nothing(tmp_path):
    with pytest.raises(KeyFileError, match="does not exist"):
        generate_keypair(prefix=tmp_path / "nope" / "k")
    assert list(tmp_path.iterdir()) == []


def test_private_key_readable_by_others_is_refused(tmp_path):
    paths = generate_keypair(prefix=tmp_path / "k")
    paths.private.chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_private_key(paths.private)


def test_public_key_given_as_private_is_refused(tmp_path):
    paths = generate_keypair(prefix=tmp_path / "k")
    with pytest.raises(KeyFileError, match="holds a public key"):
        load_private_key(paths.public)
    with pytest.raises(KeyFileError, match="PRIVATE key"):
        load_public_key(paths.private)


@pytest.mark.parametrize("loader", [load_private_key, load_public_key])
def test_missing_and_garbage_key_files_are_refused(tmp_path, loader):
    with pytest.raises(KeyFileError, match="not found"):
        loader(tmp_path / "missing.key")
    garbage = tmp_path / "garbage.key"
    garbage.write_bytes(b"not a key at all")
    garbage.chmod(0o600)
    with pytest.raises(KeyFileError, match="not a PEM"):
        loader(garbage)


def test_non_ed25519_keys_are_refused(tmp_path):
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    private = tmp_path / "rsa.key"
    private.write_bytes(
        rsa_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    private.chmod(0o600)
    public = tmp_path / "rsa.pub"
    public.write_bytes(
        rsa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    with pytest.raises(KeyFileError, match="not an Ed25519 key"):
        load_private_key(private)
    with pytest.raises(KeyFileError, match="not an Ed25519 key"):
        load_public_key(public)
