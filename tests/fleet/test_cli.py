"""``fedfleet fleet ...``: token management, migrate, serve; one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from fleet.cli import app

runner = CliRunner()
FEDFLEET = os.path.join(os.path.dirname(sys.executable), "fedfleet")


def _url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'fleet.db'}"


def test_token_create_prints_the_token_alone_on_the_last_line(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        ["token", "create", "--role", "operator", "--name", "ci", "--database-url", _url(tmp_path)],
    )
    assert result.exit_code == 0, result.output
    token = result.stdout.strip().splitlines()[-1]
    assert token.startswith("ffk_") and " " not in token
    listed = runner.invoke(app, ["token", "list", "--database-url", _url(tmp_path)])
    assert "operator\tci" in listed.stdout and token not in listed.stdout


def test_token_revoke(tmp_path: Path) -> None:
    runner.invoke(app, ["token", "create", "--role", "viewer", "--database-url", _url(tmp_path)])
    result = runner.invoke(app, ["token", "revoke", "1", "--database-url", _url(tmp_path)])
    assert result.exit_code == 0 and "revoked token 1" in result.stdout
    listed = runner.invoke(app, ["token", "list", "--database-url", _url(tmp_path)])
    assert "revoked" in listed.stdout
    missing = runner.invoke(app, ["token", "revoke", "99", "--database-url", _url(tmp_path)])
    assert missing.exit_code == 2 and "there is no token 99" in missing.stderr


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["token", "create", "--role", "superuser"], "unknown role 'superuser'"),
        (["token", "create", "--role", "admin", "--name", "two words"], "--name"),
        (["token", "create", "--role", "admin", "--ttl-days", "0"], "--ttl-days"),
        (
            ["token", "create", "--role", "admin", "--database-url", "mysql://x/y"],
            "unsupported database",
        ),
        (["token", "revoke", "0"], "out of range"),
        (["serve", "--port", "70000"], "between 1 and 65535"),
        (["serve", "--log-level", "loud"], "unknown log level"),
    ],
)
def test_bad_input_is_one_clear_line_and_writes_nothing(
    tmp_path: Path, args: list[str], fragment: str
) -> None:
    if "--database-url" not in args:
        args = [*args, "--database-url", _url(tmp_path)]
    result = runner.invoke(app, args)
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], (
        result.stderr
    )
    assert "Traceback" not in result.output
    if args[:2] == ["token", "create"] and "mysql" not in " ".join(args):
        assert not (tmp_path / "fleet.db").exists()


def test_unreachable_postgres_is_one_line(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["migrate", "--database-url", "postgresql://postgres@127.0.0.1:1/test"]
    )
    assert result.exit_code == 1
    assert result.stderr.strip().count("\n") == 0 and "cannot reach the database" in result.stderr


def test_migrate_reports_the_revision(tmp_path: Path) -> None:
    from fleet.migrate import head_revision

    result = runner.invoke(app, ["migrate", "--database-url", _url(tmp_path)])
    assert result.exit_code == 0 and head_revision() in result.stdout


@pytest.mark.slow
@pytest.mark.e2e
def test_serve_and_a_cli_token_work_together(fleet_server: Any) -> None:
    base, data_dir = fleet_server.base_url, str(fleet_server.data_dir)
    created = subprocess.run(
        [FEDFLEET, "fleet", "token", "create", "--role", "admin"],
        env={**os.environ, "FEDFLEET_FLEET_DATA_DIR": data_dir},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    token = created.stdout.strip().splitlines()[-1]
    headers = {"Authorization": f"Bearer {token}"}
    assert httpx.get(f"{base}/readyz", timeout=5).json()["status"] == "ready"
    enrolled = httpx.post(
        f"{base}/api/v1/devices",
        json={"name": "pi-1", "hardware_target": "rpi5"},
        headers=headers,
        timeout=5,
    )
    assert enrolled.status_code == 201
    assert httpx.get(f"{base}/api/v1/devices", headers=headers, timeout=5).json()["total"] == 1
    assert httpx.get(f"{base}/docs", timeout=5).status_code == 200
    assert httpx.get(f"{base}/", timeout=5, follow_redirects=False).status_code == 303
    # A second server on the same port fails with one clear line.
    port = base.rsplit(":", 1)[1]
    second = runner.invoke(app, ["serve", "--port", port])
    assert second.exit_code == 1
    assert second.stderr.strip().splitlines() == [
        f"error: cannot listen on 127.0.0.1:{port} (Address already in use); choose another --port"
    ]
