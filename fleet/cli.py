"""``fedfleet fleet ...``: serve the admin API and dashboard, migrate, manage tokens.

``serve`` and ``migrate`` are server commands: they open the fleet's database
(``--database-url``, ``$FEDFLEET_FLEET_DATABASE_URL``, else ``fleet.db`` in the data dir
of the embedded single-host setup) and say which. ``token create|list|revoke`` are operator
commands: they go over the fleet API with an admin token (``$FEDFLEET_TOKEN``); only
``token create --bootstrap`` (the first admin token) opens a database, named explicitly,
and refuses one that does not exist yet unless told ``--create``.

The OTA commands (``broker-config``, ``mqtt``: ``fleet/ota/cli.py``) and
``simulate-devices`` (``simulation/fleet_devices_cli.py``) are mounted into ``fedfleet
fleet`` by the root CLI: this module never imports ``fleet.ota`` or ``simulation``.

Heavy imports (FastAPI, SQLAlchemy, uvicorn) happen inside the commands so that
``fedfleet --help`` stays fast. Every failure caused by the user's input exits non-zero
with one line on stderr saying what to change.
"""

from __future__ import annotations

import getpass
import os
import socket
import sys
from typing import Annotated, Any

import typer

from fedfleet.cli_support import EXIT_FAILURE, DatabaseUrl, FleetUrl, fail, sub_app

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
    where = engine.url.render_as_string(hide_password=True)
    try:
        migrate.upgrade(engine)
    except OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        fail(f"cannot reach the database {where} ({reason}); check --database-url", EXIT_FAILURE)
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
    workers: Annotated[
        int,
        typer.Option(
            help="Worker processes serving the API (PostgreSQL only; SQLite is the "
            "single-process embedded default)."
        ),
    ] = 1,
) -> None:
    """Serve the API (/api/v1), the dashboard (/) and the OpenAPI docs (/docs).

    Upgrades the database schema to the newest revision before serving. With
    ``--workers N`` (PostgreSQL) N processes share the port; SIGINT/SIGTERM stops them all.
    """
    from pathlib import Path

    if log_level not in ("critical", "error", "warning", "info", "debug"):
        fail(f"unknown log level {log_level!r}; use one of critical, error, warning, info, debug")
    if not 1 <= workers <= 64:
        fail(f"--workers must be between 1 and 64, got {workers}")
    settings = settings_from_env(
        host=host,
        port=port,
        database_url=database_url,
        database_schema=database_schema,
        data_dir=Path(data_dir) if data_dir else None,
    )
    if workers > 1 and settings.database_url.startswith("sqlite"):
        fail(
            f"--workers {workers} needs PostgreSQL: SQLite is the single-process embedded "
            "default (drop --workers, or give --database-url postgresql://...)"
        )
    _check_port_free(settings.host, settings.port)
    from fedfleet.stopping import StopSignals, say_stopped

    # uvicorn takes SIGINT/SIGTERM while it serves, shuts down gracefully, puts these
    # handlers back and raises the signal again: here it only marks the stop, so the
    # command ends with exit 0 and one line instead of a KeyboardInterrupt or code 143.
    with StopSignals() as stop:
        migrated_engine(settings).dispose()  # migrate (and report an unreachable database)
        _serve(settings, log_level=log_level, stop=stop, workers=workers)
    say_stopped("fleet serve", stop.signum)


def _serve(settings: Any, *, log_level: str, stop: Any, workers: int = 1) -> None:
    """uvicorn in this process, or its supervisor of ``workers`` processes (each builds
    the app from the settings handed over in the environment); nothing if a stop came
    while starting."""
    import uvicorn
    from sqlalchemy.engine import make_url

    from fleet.app import create_app

    application = None if workers > 1 else create_app(settings.with_changes(migrate_on_start=False))
    if stop.requested.is_set():
        return
    base = f"http://{settings.host}:{settings.port}"
    where = make_url(settings.database_url).render_as_string(hide_password=True)
    typer.echo(f"fleet: database {where}", err=True)
    typer.echo(f"fleet: dashboard {base}/  API {base}/api/v1  docs {base}/docs", err=True)
    if application is not None:
        uvicorn.run(application, host=settings.host, port=settings.port, log_level=log_level)
        return
    from fleet.app import settings_environment

    os.environ.update(settings_environment(settings))  # read by each worker's factory
    typer.echo(f"fleet: {workers} worker processes", err=True)
    # uvicorn's supervisor takes SIGINT/SIGTERM, stops and joins every worker, returns.
    uvicorn.run(
        "fleet.app:create_app_from_env",
        factory=True,
        workers=workers,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
    )


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
    where = engine.url.render_as_string(hide_password=True)
    typer.echo(f"database {where} at revision {migrations.current_revision(engine)}")
    engine.dispose()


BootstrapDatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="With --bootstrap only: the fleet's database, sqlite:///PATH or "
        "postgresql://USER@HOST:PORT/DB (default: $FEDFLEET_FLEET_DATABASE_URL; there is no "
        "other default).",
        show_default=False,
    ),
]


def over_api(fleet_url: str | None, call: Any) -> Any:
    """Run ``call(client)`` against the fleet API; one line on stderr when it fails."""
    from fleet.client import FleetClient, FleetError, connection_from_env

    try:
        with FleetClient(connection_from_env(fleet_url)) as client:
            return call(client)
    except FleetError as err:
        fail(str(err), EXIT_FAILURE)


def _bootstrap_engine(database_url: str | None, database_schema: str | None, *, create: bool):  # type: ignore[no-untyped-def]
    """The fleet database named explicitly, refused when it does not exist yet unless
    ``create``; migrated to the newest schema."""
    import os
    from pathlib import Path

    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    from fleet import migrate
    from fleet.settings import ENV_PREFIX

    url = database_url or os.environ.get(ENV_PREFIX + "DATABASE_URL", "").strip()
    if not url:
        fail(
            "--bootstrap needs the fleet's database: pass --database-url sqlite:///PATH or "
            f"postgresql://... (or set ${ENV_PREFIX}DATABASE_URL)"
        )
    settings = settings_from_env(database_url=url, database_schema=database_schema)
    try:
        parsed = make_url(settings.database_url)
    except ArgumentError:
        fail(f"--database-url {url!r} is not a database URL; use sqlite:///PATH or postgresql://")
    if parsed.get_backend_name() == "sqlite" and not create:
        path = Path(parsed.database or "")
        if not parsed.database or parsed.database == ":memory:" or not path.is_file():
            fail(
                f"there is no fleet database at {path}; check --database-url (`fedfleet fleet "
                "serve` prints the one it uses), or add --create to start a new one"
            )
    if not create:
        from sqlalchemy.exc import OperationalError

        from fleet.db import make_engine

        probe = make_engine(settings.database_url, schema=settings.database_schema)
        try:
            revision = migrate.current_revision(probe)
        except OperationalError as exc:
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            fail(f"cannot reach the database ({reason}); check --database-url", EXIT_FAILURE)
        finally:
            probe.dispose()
        if revision is None:
            fail(
                f"the database at {parsed.render_as_string(hide_password=True)} has no fleet "
                "schema; check --database-url, or add --create to set one up there"
            )
    return migrated_engine(settings)


@token_app.command("create")
def token_create(
    role: Annotated[
        str | None,
        typer.Option(
            help="viewer, operator or admin (--bootstrap: admin, the default there).",
            show_default=False,
        ),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(help="Who holds the token (default: the role).", show_default=False),
    ] = None,
    ttl_days: Annotated[
        int | None,
        typer.Option(help="Expire after this many days (default: never).", show_default=False),
    ] = None,
    fleet_url: FleetUrl = None,
    bootstrap: Annotated[
        bool,
        typer.Option(
            "--bootstrap",
            help="Create the first admin token directly in the fleet's database (needs "
            "--database-url or $FEDFLEET_FLEET_DATABASE_URL, and no API token).",
        ),
    ] = False,
    create: Annotated[
        bool,
        typer.Option(
            "--create",
            help="With --bootstrap: set up the database if it does not exist yet.",
        ),
    ] = False,
    database_url: BootstrapDatabaseUrl = None,
    database_schema: DatabaseSchema = None,
) -> None:
    """Create an API token and print it (alone, on the last line of stdout) once.

    Over the fleet API, with an admin token in $FEDFLEET_TOKEN.

    The very first admin token: --bootstrap --database-url URL (--create: a new database).
    """
    role = role or ("admin" if bootstrap else None)
    if role is None:
        fail("give --role viewer, --role operator or --role admin")
    if role not in ROLES:
        fail(f"unknown role {role!r}; use --role viewer, --role operator or --role admin")
    if bootstrap and role != "admin":
        fail("--bootstrap creates the first admin token; create other roles with it, over the API")
    if not bootstrap and (database_url or database_schema or create):
        fail(
            "--database-url, --database-schema and --create go with --bootstrap only; other "
            "tokens are created over the API (--fleet-url, $FEDFLEET_TOKEN of an admin)"
        )
    from pydantic import ValidationError

    from fleet.models.auth import ApiTokenCreate, Role

    try:
        request = ApiTokenCreate(name=name or role, role=Role(role), ttl_days=ttl_days)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        fail(f"--{field.replace('_', '-')}: {first['msg'].removeprefix('Value error, ')}")
    if bootstrap:
        secret, token_id = _bootstrap_token(request, database_url, database_schema, create=create)
    else:
        created = over_api(
            fleet_url,
            lambda c: c.create_token(
                name=request.name, role=request.role.value, ttl_days=request.ttl_days
            ),
        )
        secret, token_id = created.token, created.info.id
    typer.echo(
        f"created {role} token '{request.name}' (id {token_id}); it is shown once, store it now:",
        err=True,
    )
    typer.echo(secret)


def _bootstrap_token(  # type: ignore[no-untyped-def]
    request, database_url: str | None, database_schema: str | None, *, create: bool
) -> tuple[str, int]:
    from fleet.crud import tokens
    from fleet.db import session_scope

    engine = _bootstrap_engine(database_url, database_schema, create=create)
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
    return secret, int(token_id or 0)


@token_app.command("list")
def token_list(fleet_url: FleetUrl = None) -> None:
    """List tokens (never their secrets), over the API with an admin token."""
    for token in over_api(fleet_url, lambda c: c.list_tokens()):
        state = "revoked" if token.revoked_at else "active"
        typer.echo(f"{token.id}\t{token.role}\t{token.name}\t{token.prefix}…\t{state}")


@token_app.command("revoke")
def token_revoke(
    token_id: Annotated[int, typer.Argument(help="Token id (from `token list`).")],
    fleet_url: FleetUrl = None,
) -> None:
    """Revoke a token and end its dashboard sessions (over the API, admin token)."""
    if not 0 < token_id < 2**31:
        fail(f"token id {token_id} is out of range; see `fedfleet fleet token list`")
    token = over_api(fleet_url, lambda c: c.revoke_token(token_id))
    typer.echo(f"revoked token {token_id} ({token.name})")


def main() -> None:  # pragma: no cover - for `python -m fleet.cli`
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover - `python -m fleet.cli` (skips the root CLI)
    main()
