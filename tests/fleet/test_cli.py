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


def _bootstrap(tmp_path: Path, *extra: str) -> Any:
    return runner.invoke(
        app, ["token", "create", "--bootstrap", "--database-url", _url(tmp_path), *extra]
    )


def test_bootstrap_needs_an_existing_database_unless_told_to_create_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FEDFLEET_FLEET_DATABASE_URL", raising=False)
    unnamed = runner.invoke(app, ["token", "create", "--bootstrap"])
    assert unnamed.exit_code == 2 and "--database-url" in _one_line(unnamed.stderr)
    missing = _bootstrap(tmp_path)
    assert missing.exit_code == 2
    assert f"there is no fleet database at {tmp_path / 'fleet.db'}" in _one_line(missing.stderr)
    assert "--create" in missing.stderr and not (tmp_path / "fleet.db").exists()
    (tmp_path / "fleet.db").touch()  # a file, but no fleet schema in it
    empty = _bootstrap(tmp_path)
    assert empty.exit_code == 2 and "has no fleet schema" in _one_line(empty.stderr)
    (tmp_path / "fleet.db").unlink()

    created = _bootstrap(tmp_path, "--create")

    assert created.exit_code == 0, created.output
    token = created.stdout.strip().splitlines()[-1]
    assert token.startswith("ffk_") and " " not in token
    assert "created admin token 'admin'" in created.stderr
    again = _bootstrap(tmp_path, "--name", "second-admin")  # it exists now: no --create
    assert again.exit_code == 0, again.output


@pytest.mark.postgres
def test_bootstrap_refuses_a_postgres_schema_without_the_fleet_tables(
    pg_scratch_schema: Any,
) -> None:
    url = "postgresql://postgres@127.0.0.1:5432/test"
    with pg_scratch_schema() as schema:
        base = ["token", "create", "--bootstrap", "--database-url", url]
        refused = runner.invoke(app, [*base, "--database-schema", schema])
        assert refused.exit_code == 2 and "has no fleet schema" in _one_line(refused.stderr)
        created = runner.invoke(app, [*base, "--database-schema", schema, "--create"])
        assert created.exit_code == 0, created.output


def _one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), text
    return lines[0]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["token", "create", "--role", "superuser"], "unknown role 'superuser'"),
        (["token", "create", "--role", "admin", "--name", "two words"], "--name"),
        (["token", "create", "--role", "admin", "--ttl-days", "0"], "--ttl-days"),
        (["token", "create"], "give --role"),
        (["token", "create", "--bootstrap", "--role", "viewer"], "first admin token"),
        (
            ["token", "create", "--role", "admin", "--database-url", "sqlite:///x.db"],
            "go with --bootstrap only",
        ),
        (
            ["token", "create", "--bootstrap", "--database-url", "mysql://x/y"],
            "unsupported database",
        ),
        (["token", "revoke", "0"], "out of range"),
        (["serve", "--port", "70000"], "between 1 and 65535"),
        (["serve", "--log-level", "loud"], "unknown log level"),
    ],
)
def test_bad_input_is_one_clear_line_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], fragment: str
) -> None:
    monkeypatch.chdir(tmp_path)
    if args[0] == "serve":
        args = [*args, "--database-url", _url(tmp_path)]
    result = runner.invoke(app, args)
    assert result.exit_code != 0
    assert fragment in _one_line(result.stderr)
    assert "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []


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
    assert f"database sqlite:///{tmp_path / 'fleet.db'} at revision" in result.stdout


@pytest.mark.slow
@pytest.mark.e2e
def test_serve_and_a_cli_token_work_together(fleet_server: Any, tmp_path: Path) -> None:
    base = fleet_server.base_url
    created = subprocess.run(
        [FEDFLEET, "fleet", "token", "create", "--bootstrap"],
        env={**os.environ, "FEDFLEET_FLEET_DATABASE_URL": fleet_server.database_url},
        cwd=tmp_path,
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
    assert len(httpx.get(f"{base}/api/v1/devices", headers=headers, timeout=5).json()["items"]) == 1
    assert httpx.get(f"{base}/docs", timeout=5).status_code == 200
    assert httpx.get(f"{base}/", timeout=5, follow_redirects=False).status_code == 303
    # A second server on the same port fails with one clear line.
    port = base.rsplit(":", 1)[1]
    second = runner.invoke(app, ["serve", "--port", port])
    assert second.exit_code == 1
    assert second.stderr.strip().splitlines() == [
        f"error: cannot listen on 127.0.0.1:{port} (Address already in use); choose another --port"
    ]


@pytest.mark.slow
def test_tokens_are_created_listed_and_revoked_over_the_api(
    fleet_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: the first admin token, bootstrapped on the server's own database.
    admin = _bootstrap_on(fleet_server)
    url = ["--fleet-url", fleet_server.base_url]
    monkeypatch.setenv("FEDFLEET_TOKEN", admin)

    # Execute: an operator token over the API, listed, revoked.
    created = runner.invoke(app, ["token", "create", "--role", "operator", "--name", "ci", *url])
    assert created.exit_code == 0, created.output
    operator = created.stdout.strip().splitlines()[-1]
    listed = runner.invoke(app, ["token", "list", *url])
    revoked = runner.invoke(app, ["token", "revoke", "2", *url])
    missing = runner.invoke(app, ["token", "revoke", "99", *url])

    # Assert: the API made and audited it; only its prefix is ever listed.
    assert operator.startswith("ffk_") and operator != admin
    assert "2\toperator\tci\t" in listed.stdout and operator not in listed.stdout
    assert revoked.exit_code == 0 and "revoked token 2 (ci)" in revoked.stdout
    assert missing.exit_code == 1 and "there is no token 99" in _one_line(missing.stderr)
    headers = {"Authorization": f"Bearer {admin}"}
    audit = httpx.get(f"{fleet_server.base_url}/api/v1/audit", headers=headers, timeout=5).json()
    assert any(
        e["entity_id"] == "2" and e["source"] == "api" and e["actor"] == "token:admin#1"
        for e in audit["items"]
    ), audit
    assert (
        httpx.get(
            f"{fleet_server.base_url}/api/v1/me",
            headers={"Authorization": f"Bearer {operator}"},
            timeout=5,
        ).status_code
        == 401
    )

    # An operator token may not make tokens; a missing one says how to get the first.
    monkeypatch.setenv("FEDFLEET_TOKEN", _token_of(fleet_server, admin, "operator"))
    refused = runner.invoke(app, ["token", "create", "--role", "admin", *url])
    assert refused.exit_code == 1 and "needs an admin token" in _one_line(refused.stderr)
    monkeypatch.delenv("FEDFLEET_TOKEN")
    unset = runner.invoke(app, ["token", "list", *url])
    assert "FEDFLEET_TOKEN is not set" in _one_line(unset.stderr) and "--bootstrap" in unset.stderr


def _bootstrap_on(server: Any) -> str:
    result = runner.invoke(
        app, ["token", "create", "--bootstrap", "--database-url", server.database_url]
    )
    assert result.exit_code == 0, result.output
    return str(result.stdout.strip().splitlines()[-1])


def _token_of(server: Any, admin: str, role: str) -> str:
    created = httpx.post(
        f"{server.base_url}/api/v1/tokens",
        json={"name": role, "role": role},
        headers={"Authorization": f"Bearer {admin}"},
        timeout=5,
    )
    assert created.status_code == 201, created.text
    return str(created.json()["token"])
