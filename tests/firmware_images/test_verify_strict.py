"""`fedfleet image verify` (the real command) refuses any byte the signature does not cover."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from firmware_images_testkit import (
    inserted_before_directory,
    make_manifest,
    run_fedfleet,
    with_comment,
)

from firmware_images.bundle import pack_bundle
from firmware_images.keys import generate_keypair, load_private_key


@pytest.fixture
def signed(tmp_path: Path) -> tuple[Path, Path]:
    """A bundle file (fake model) and the public key file it verifies with."""
    paths = generate_keypair(prefix=tmp_path / "ops")
    key = load_private_key(paths.private)
    model = bytes(range(256)) * 40
    bundle = pack_bundle(manifest=make_manifest(model=model, key=key), model=model, private_key=key)
    path = tmp_path / "good.ffb"
    path.write_bytes(bundle)
    return path, paths.public


@pytest.mark.parametrize(
    "forge",
    [
        pytest.param(lambda b: with_comment(b, b"c" * 60_000), id="60KB-zip-comment"),
        pytest.param(lambda b: inserted_before_directory(b, b"x" * 1000), id="before-directory"),
    ],
)
def test_image_verify_refuses_unsigned_bytes_with_one_line(
    tmp_path: Path, signed: tuple[Path, Path], forge: object
) -> None:
    # Prepare: the same signed bundle with bytes its signature does not cover.
    good, public = signed
    forged = tmp_path / "forged.ffb"
    forged.write_bytes(forge(good.read_bytes()))  # type: ignore[operator]
    assert hashlib.sha256(forged.read_bytes()) != hashlib.sha256(good.read_bytes())
    # Execute
    ok = run_fedfleet("image", "verify", str(good), "--pubkey", str(public), cwd=tmp_path)
    bad = run_fedfleet("image", "verify", str(forged), "--pubkey", str(public), cwd=tmp_path)
    # Assert: the original verifies; the forgery fails the check (exit 1) with one line.
    assert ok.returncode == 0 and ok.stdout.startswith(f"OK {good}"), ok.stderr
    assert bad.returncode == 1 and bad.stdout == ""
    lines = [line for line in bad.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), bad.stderr
    assert "signature does not cover" in lines[0]
