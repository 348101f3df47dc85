"""``fedfleet model register RUN_DIR``: a finished run's model into the fleet's registry.

The fleet is reached over HTTP at ``--fleet-url`` (default ``$FEDFLEET_URL``, else
``http://127.0.0.1:8080``) with the token in ``$FEDFLEET_TOKEN`` (never an argument).
The new version number is printed alone on stdout, so scripts can write
``V=$(fedfleet model register runs/<stamp>)``; the summary goes to stderr.
Heavy imports (torch, httpx) happen inside the command.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from fedfleet.cli_support import EXIT_FAILURE, FleetUrl, fail, sub_app

if TYPE_CHECKING:
    from fleet.client import FleetConnection

model_app = sub_app("model", "The fleet's model registry: register a finished run's model.")


@model_app.callback()
def _model_group() -> None:
    """The fleet's model registry: register a finished run's model."""  # keeps `model` a group


@model_app.command("register")
def model_register(
    run_dir: Annotated[
        Path,
        typer.Argument(
            help="Run folder with metrics.json and model.pt (what `fedfleet simulate` prints "
            "after 'results:').",
            show_default=False,
        ),
    ],
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            help="Label of the version (default: '<task> from run <id>').",
            show_default=False,
        ),
    ] = None,
    description: Annotated[str, typer.Option("--description", help="Free text.")] = "",
    key: Annotated[
        Path | None,
        typer.Option(
            "--key",
            help="Ed25519 private key (PREFIX.key): sign the checkpoint's SHA-256 (needed when "
            "the fleet was started with a signing public key).",
            show_default=False,
        ),
    ] = None,
    max_group_gap: Annotated[
        float | None,
        typer.Option(
            "--max-group-gap",
            help="Refuse the run when its last fairness audit's largest accuracy gap between "
            "groups (metrics.json fairness.max_gap) is above this, or when it has none.",
            show_default=False,
        ),
    ] = None,
    fleet_url: FleetUrl = None,
) -> None:
    """Record the run in the fleet and register its model.pt as a new model version."""
    from fleet.client import FleetError, connection_from_env

    try:
        connection = connection_from_env(fleet_url)
    except FleetError as err:
        fail(str(err))
    register_and_report(
        run_dir,
        connection,
        name=name,
        description=description,
        key=key,
        max_group_gap=max_group_gap,
    )


def register_and_report(
    run_dir: Path,
    connection: FleetConnection,
    *,
    name: str | None = None,
    description: str = "",
    key: Path | None = None,
    fleet_run_id: int | None = None,
    parent_id: int | None = None,
    max_group_gap: float | None = None,
) -> int:
    """Register ``run_dir`` with the fleet at ``connection`` (from
    ``connection_from_env``), print the summary and the next step on stderr and the
    version alone on stdout; exit 2 for a bad folder or key, 1 when the fleet refuses
    or a gate (``max_group_gap``) refuses the run — before anything reaches the fleet."""
    from coordinator.registration import (
        RunFolderError,
        check_checkpoint,
        check_max_group_gap,
        read_run_folder,
        register_run,
    )
    from fleet.client import FleetClient, FleetError

    try:
        run = read_run_folder(run_dir)
    except RunFolderError as err:
        fail(str(err))
    if max_group_gap is not None:
        if not 0.0 <= max_group_gap <= 1.0:
            fail(f"--max-group-gap {max_group_gap:g} must be between 0 and 1 (an accuracy gap)")
        try:
            check_max_group_gap(run, max_group_gap)
        except RunFolderError as err:
            fail(str(err), EXIT_FAILURE)
    private_key = None
    if key is not None:
        from firmware_images.errors import KeyFileError
        from firmware_images.keys import load_private_key

        try:
            private_key = load_private_key(key)
        except KeyFileError as err:
            fail(str(err))
    try:
        sha256 = check_checkpoint(run)
    except RunFolderError as err:
        fail(str(err))
    with FleetClient(connection) as client:
        try:
            done = register_run(
                client,
                run,
                sha256=sha256,
                name=name,
                description=description,
                private_key=private_key,
                fleet_run_id=fleet_run_id,
                parent_id=parent_id,
            )
        except FleetError as err:
            fail(str(err), EXIT_FAILURE)
    accuracy = "n/a" if run.final_accuracy is None else f"{run.final_accuracy:.4f}"
    typer.echo(
        f"registered model version {done.model_version} ({run.task}, final accuracy {accuracy} "
        f"after {len(run.rounds)} rounds) from run {run.run_id} (fleet run "
        f"{done.fleet_run_id}); checkpoint artifact {done.artifact_id}, sha256 "
        f"{done.sha256[:16]}…",
        err=True,
    )
    typer.echo(
        f"next: fedfleet image build --target TARGET --model {done.model_version} "
        "--key KEY --out FILE --upload",
        err=True,
    )
    typer.echo(str(done.model_version))
    return done.model_version
