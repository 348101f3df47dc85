"""The site's commands ``fedfleet site init|join|audit`` (mounted by ``site_cli.app``).

Heavy imports (torch, flwr) stay inside the functions. Bad input is one ``error:``
line on stderr and exit code 2; nothing half-written is left.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated

import typer

from fedfleet.cli_support import EXIT_FAILURE, fail

ConfigOpt = Annotated[Path, typer.Option("--config", help="The site's site.toml.")]


def site_init(
    name: Annotated[str, typer.Option(help="The site's name, e.g. st-marys.")],
    out: Annotated[Path, typer.Option(help="Folder for NAME.key, NAME.pub, site.toml.")] = Path(
        "."
    ),
    force: Annotated[bool, typer.Option(help="Replace existing files.")] = False,
) -> None:
    """Create the site's key pair and a commented site.toml template."""
    from edge_client.site import init_site

    try:
        files = init_site(name=name, out_dir=out, overwrite=force)
    except ValueError as exc:
        fail(str(exc))
    typer.echo(f"wrote {files.config}, {files.private_key} (keep secret), {files.public_key}")
    typer.echo(
        f"next: send {files.public_key.name} to the coordinator operator "
        f"(`fedfleet coordinator add-site {name} --public-key {files.public_key.name}`), "
        "edit site.toml, then `fedfleet site join --config site.toml`"
    )


def site_join(
    config: ConfigOpt = Path("site.toml"),
    rejoin_timeout: Annotated[
        float,
        typer.Option(help="Seconds to keep retrying when the coordinator refuses activation."),
    ] = 150.0,
) -> None:
    """Check the data against the schema, then serve rounds over TLS with node auth.

    Connects to the coordinator with the root certificate and the site's private key;
    runs until stopped (Ctrl-C).
    """
    from edge_client.audit import AuditLog
    from edge_client.site import check_ready, run_supernode
    from edge_client.site_config import SiteConfig

    try:
        site = SiteConfig.load(config)
        check_ready(site)
        opened = AuditLog.for_site(site).open()  # seals an interrupted append, migrates
    except ValueError as exc:
        fail(str(exc))
    if opened.note:
        typer.echo(f"site {site.name}: audit log: {opened.note}", err=True)
    typer.echo(
        f"site {site.name}: joining {site.coordinator_address} (TLS, node key "
        f"{site.private_key.name}); audit log in {site.state_dir}",
        err=True,
    )
    raise typer.Exit(code=run_supernode(site, rejoin_timeout=rejoin_timeout))


def site_audit(
    config: ConfigOpt = Path("site.toml"),
    verify: Annotated[bool, typer.Option(help="Check the hash chain; exit 1 if tampered.")] = False,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="One JSON object per line (with --verify: the verdict as one object, "
            "what `fedfleet report --site` reads).",
        ),
    ] = False,
) -> None:
    """Print every message the site sent (hash-chained audit log); --verify checks it."""
    from edge_client.audit import AuditLog
    from edge_client.site_config import SiteConfig

    try:
        site = SiteConfig.load(config)
    except ValueError as exc:
        fail(str(exc))
    audit = AuditLog.for_site(site)
    if verify:
        result = audit.verify()
        if as_json:
            verdict = {"site": site.name, "path": str(audit.path), **dataclasses.asdict(result)}
            typer.echo(json.dumps(verdict, sort_keys=True))
            raise typer.Exit(code=0 if result.ok else EXIT_FAILURE)
        if not result.ok:
            typer.echo(f"TAMPERED: {audit.path}: {result.problem}", err=True)
            raise typer.Exit(code=EXIT_FAILURE)
        typer.echo(
            f"ok: {result.entries} entries, hash chain and head authenticated ({audit.path})"
            if result.authenticated
            else f"ok: {result.entries} entries, hash chain intact ({audit.path})"
        )
        if result.note:
            typer.echo(f"note: {result.note}")
        return
    try:
        for entry in audit.entries():
            if as_json:
                typer.echo(json.dumps(entry, sort_keys=True))
                continue
            eps = entry.get("epsilon")
            typer.echo(
                f"{entry.get('seq'):>5} {entry.get('time')} run={entry.get('run')} "
                f"round={entry.get('round')} {entry.get('type')} {entry.get('kind')} "
                f"{entry.get('size')}B sha256={str(entry.get('sha256'))[:16]} "
                f"ε={'-' if eps is None else f'{eps:.3g}'}"
                + (f" reason: {entry['reason']}" if entry.get("reason") else "")
            )
    except json.JSONDecodeError:
        fail(f"{audit.path} has a line that is not JSON; run with --verify")
