"""`fedfleet fleet mqtt --command-key`: an unusable key is one line and exit 2, before
anything connects."""

from __future__ import annotations

import os
from pathlib import Path

from typer.testing import CliRunner

from fedfleet.cli import build_app
from firmware_images.keys import generate_keypair


def test_a_missing_public_or_world_readable_command_key_exits_2(tmp_path: Path) -> None:
    # Prepare: a fleet password file (so the key is what fails) and a key pair.
    password = tmp_path / "fleet.pass"
    password.write_text("pw")
    keys = generate_keypair(prefix=tmp_path / "cmd")
    readable = tmp_path / "readable.key"
    readable.write_bytes(keys.private.read_bytes())
    os.chmod(readable, 0o644)
    runner = CliRunner()
    for key, words in (
        (tmp_path / "nope.key", "--command-key"),
        (keys.public, "public key"),
        (readable, "--command-key"),
    ):
        # Execute: the service with that key, against no broker at all.
        result = runner.invoke(
            build_app(),
            ["fleet", "mqtt", "--password-file", str(password), "--command-key", str(key)],
        )
        # Assert: exit 2 and one line naming the problem; nothing was started.
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and words in lines[0], result.output


def test_a_bad_protocol_v1_window_exits_2(tmp_path: Path) -> None:
    password = tmp_path / "fleet.pass"
    password.write_text("pw")
    result = CliRunner().invoke(
        build_app(),
        ["fleet", "mqtt", "--password-file", str(password), "--protocol-v1-until", "soon"],
    )
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "--protocol-v1-until 'soon'" in lines[0] and "ISO 8601" in lines[0]
