"""``fedfleet coordinator init`` writes a coordinator.toml the loader accepts as is."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import tomllib
from typer.testing import CliRunner

from coordinator.cli import coordinator_app
from coordinator.superlink import CoordinatorSettings


def test_init_writes_a_file_the_loader_accepts_with_its_defaults(tmp_path: Path) -> None:
    # Execute
    result = CliRunner().invoke(coordinator_app, ["init", "--out", str(tmp_path / "c.toml")])
    # Assert: the loader reads every key, and they are the defaults of an empty file.
    assert result.exit_code == 0, result.output
    written = CoordinatorSettings.load(tmp_path / "c.toml")
    (tmp_path / "empty.toml").write_text("")
    assert asdict(written) == asdict(CoordinatorSettings.load(tmp_path / "empty.toml"))
    doc = tomllib.loads((tmp_path / "c.toml").read_text())
    assert set(doc) == {"superlink", "tls", "state"}
    assert "#" in (tmp_path / "c.toml").read_text()  # commented


def test_init_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    path = tmp_path / "coordinator.toml"
    path.write_text('[superlink]\naddress = "10.0.0.1:9092"\n')
    refused = CliRunner().invoke(coordinator_app, ["init", "--out", str(path)])
    assert refused.exit_code == 2
    assert (
        refused.output.strip()
        == f"error: {path} already exists; pass --force to replace it or choose --out"
    )
    assert "10.0.0.1" in path.read_text()

    forced = CliRunner().invoke(coordinator_app, ["init", "--out", str(path), "--force"])
    assert forced.exit_code == 0
    assert CoordinatorSettings.load(path).host == "127.0.0.1"
