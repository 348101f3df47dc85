"""``fedfleet fleet ...``: serve the admin API and dashboard, migrate, manage tokens.

The OTA commands (``broker-config``, ``mqtt``: ``fleet/ota/cli.py``) and
``simulate-devices`` (``simulation/fleet_devices_cli.py``) are mounted into ``fedfleet
fleet`` by the root CLI: this module never imports ``fleet.ota`` or ``simulation``.

Heavy imports (FastAPI, SQLAlchemy, uvicorn) happen inside the commands so that
``fedfleet --help`` stays fast. Every failure caused by the user's input exits non-zero
with one line on stderr saying what to change.
"""

from __future__ import annotations

import getpass
import socket
import sys
from typing import Annotated, Any

import typer

from fedfleet.cli_support import EXIT_FAILURE, DatabaseUrl, fail, sub_app

app = sub_app(help="The fleet admin API and dashboard.")
token_app = sub_app(help="Create, list and revoke API tokens.")
app.add_typer(token_app, name="token")
DatabaseSchema = Annotated[
    str | None,
    typer.Option(
        "--database-schema",
        help="PostgreSQL schema for the fleet's tables (default: search_path).",
        show_default=False,
    ),
]
ROLES = ("viewer", "operator", "admin")


def settings_from_env(**overrides: Any):  # type: ignore[no-untyped-def]
    """The fleet's settings from the environment and the options; exit 2 if invalid."""
    from fleet.settings import FleetSettings

    try:
        return FleetSettings.from_env(**overrides)
    except ValueError as exc:
        fail(str(exc))


def migrated_engine(settings):  # type: ignore[no-untyped-def]
    """Engine for the settings, migrated to the newest schema; one-line errors."""
    from sqlalchemy.exc import OperationalError

    from fleet import migrate
    from fleet.db import make_engine

    engine = make_engine(settings.database_url, schema=settings.database_schema)
    try:
        migrate.upgrade(engine)
    except OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        fail(f"cannot reach the database ({reason}); check --database-url", EXIT_FAILURE)
    except migrate.MigrationError as exc:
        fail(str(exc).splitlines()[0], EXIT_FAILURE)
    return engine


def cli_actor():  # type: ignore[no-untyped-def]
    """Who the audit log records for a command run here: ``cli:<login>``, admin."""
    from fleet.audit import Actor

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return Actor(name=f"cli:{user}"[:100], role="admin", source="cli")


@app.command()
def serve(
    host: Annotated[
        str | None,
        typer.Option(help="Interface to listen on (default 127.0.0.1).", show_default=False),
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="TCP port (default 8080).", show_default=False)
    ] = None,
    database_url: DatabaseUrl = None,
    database_schema: DatabaseSchema = None,
    data_dir: Annotated[
        str | None,
        typer.Option(
            help="Folder for the SQLite file and artifacts (default fleet-data).",
            show_default=False,
        ),
    ] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Serve the API (/api/v1), the dashboard (/) and the OpenAPI docs (/docs).

    Upgrades the database schema to the newest revision before serving.
    """
    from pathlib import Path

    settings = settings_from_env(
        host=host,
        port=port,
        database_url=database_url,
        database_schema=database_schema,
        data_dir=Path(data_dir) if data_dir else None,
    )
    if log_level not in ("critical", "error", "warning", "info", "debug"):
        fail(f"unknown log level {log_level!r}; use one of critical, error, warning, info, debug")
    _check_port_free(settings.host, settings.port)
    migrated_engine(settings).dispose()  # migrate (and report an unreachable database) up front

    import uvicorn

    from fleet.app import create_app

    application = create_app(settings.with_changes(migrate_on_start=False))
    base = f"http://{settings.host}:{settings.port}"
    typer.echo(f"fleet: dashboard {base}/  API {base}/api/v1  docs {base}/docs", err=True)
    uvicorn.run(application, host=settings.host, port=settings.port, log_level=log_level)


def _check_port_free(host: str, port: int) -> None:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        fail(f"cannot resolve host {host!r} ({exc.strerror}); use an IP address such as 127.0.0.1")
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            fail(
                f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port",
                EXIT_FAILURE,
            )


@app.command()
def migrate(
    database_url: DatabaseUrl = None,
    database_schema: DatabaseSchema = None,
) -> None:
    """Upgrade the database schema to the newest revision (serve does this too)."""
    from fleet import migrate as migrations

    settings = settings_from_env(database_url=database_url, database_schema=database_schema)
    engine = migrated_engine(settings)
    typer.echo(f"database at revision {migrations.current_revision(engine)}")
    engine.dispose()


@token_app.command("create")
def token_create(
    role: Annotated[str, typer.Option(help="viewer, operator or admin.", show_default=False)],
    name: Annotated[
        str | None,
        typer.Option(help="Who holds the token (default: the role).", show_default=False),
    ] = None,
    ttl_days: Annotated[
        int | None,
        typer.Option(help="Expire after this many days (default: never).", show_default=False),
    ] = None,
    database_url: DatabaseUrl = None,
    database_schema: DatabaseSchema = None,
) -> None:
    """Create an API token and print it (alone, on the last line of stdout) once."""
    if role not in ROLES:
        fail(f"unknown role {role!r}; use --role viewer, --role operator or --role admin")
    from pydantic import ValidationError

    from fleet.crud import tokens
    from fleet.db import session_scope
    from fleet.models.auth import ApiTokenCreate, Role

    try:
        request = ApiTokenCreate(name=name or role, role=Role(role), ttl_days=ttl_days)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        fail(f"--{field.replace('_', '-')}: {first['msg'].removeprefix('Value error, ')}")
    settings = settings_from_env(database_url=database_url, database_schema=database_schema)
    engine = migrated_engine(settings)
    with session_scope(engine, write=True) as session:
        secret, token = tokens.create_token(
            session,
            name=request.name,
            role=request.role,
            actor=cli_actor(),
            ttl_days=request.ttl_days,
        )
        token_id = token.id
    engine.dispose()
    typer.echo(
        f"created {role} token '{request.name}' (id {token_id}); it is shown once, store it now:",
        err=True,
    )
    typer.echo(secret)


@token_app.command("list")
def token_list(database_url: DatabaseUrl = None, database_schema: DatabaseSchema = None) -> None:
    """List tokens (never their secrets)."""
    from fleet.crud import tokens
    from fleet.db import session_scope

    settings = settings_from_env(database_url=database_url, database_schema=database_schema)
    engine = migrated_engine(settings)
    with session_scope(engine, write=False) as session:
        rows = tokens.list_tokens(session)
        for token in rows:
            state = "revoked" if token.revoked_at else "active"
            typer.echo(f"{token.id}\t{token.role.value}\t{token.name}\t{token.prefix}…\t{state}")
    engine.dispose()


@token_app.command("revoke")
def token_revoke(
    token_id: Annotated[int, typer.Argument(help="Token id (from `token list`).")],
    database_url: DatabaseUrl = None,
    database_schema: DatabaseSchema = None,
) -> None:
    """Revoke a token and end its dashboard sessions."""
    from fleet.crud import tokens
    from fleet.db import session_scope

    if not 0 < token_id < 2**31:
        fail(f"token id {token_id} is out of range; see `fedfleet fleet token list`")
    settings = settings_from_env(database_url=database_url, database_schema=database_schema)
    engine = migrated_engine(settings)
    with session_scope(engine, write=True) as session:
        token = tokens.revoke_token(session, token_id, actor=cli_actor())
    engine.dispose()
    if token is None:
        fail(f"there is no token {token_id}; see `fedfleet fleet token list`")
    typer.echo(f"revoked token {token_id} ({token.name})")


def main() -> None:  # pragma: no cover - for `python -m fleet.cli`
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover - `python -m fleet.cli` (skips the root CLI)
    main()
