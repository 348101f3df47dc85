"""The root ``fedfleet`` command.

It only mounts each package's Typer sub-app (and the commands one package adds to
another's sub-app, :data:`_EXTENSIONS`). Sub-apps are imported when the process
starts, so each package's ``cli`` module must keep heavy imports (torch, flwr, fastapi)
inside its command functions. A sub-app whose optional dependencies are not installed
(a hospital site installs no server extras) is left out instead of breaking the command.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import typer

# (command name, "module:attribute", help). Order is the order shown in --help.
_SUBAPPS: tuple[tuple[str, str, str], ...] = (
    ("simulate", "simulation.cli:simulate", "Run a federated simulation on this machine."),
    ("coordinator", "coordinator.cli:coordinator_app", "Run the coordinator (SuperLink)."),
    ("run", "coordinator.cli:run_app", "Submit, inspect and resume federated runs."),
    ("certs", "coordinator.cli:certs_app", "Create a development CA and TLS certificates."),
    ("site", "edge_client.site_cli:app", "A hospital/bank site: init, join, budget, audit."),
    ("device", "edge_client.device_cli:app", "The MQTT device agent."),
    ("fleet", "fleet.cli:app", "The fleet admin API, dashboard, tokens and broker config."),
    ("rollout", "fleet.ota.cli:rollout_app", "Staged OTA rollouts."),
    ("model", "coordinator.model_cli:model_app", "The model registry: register a run's model."),
    ("image", "firmware_images.cli:image_app", "Build, verify, inspect, publish signed bundles."),
    ("keys", "firmware_images.cli:keys_app", "Ed25519 signing keys."),
)

# Commands other packages add to a sub-app above, listed before the sub-app's own: the
# admin CLI (fleet/cli.py) never imports the fleet's OTA side (fleet/ota/) nor the
# simulator (DESIGN), so `fedfleet fleet broker-config|mqtt|simulate-devices` join here.
_EXTENSIONS: dict[str, tuple[str, ...]] = {
    "fleet": ("fleet.ota.cli:fleet_commands", "simulation.fleet_devices_cli:fleet_commands"),
}


def _load(target: str) -> Any:
    """The object ``module:attribute`` names, or None when its module cannot be imported
    (a missing optional extra: a site installs no server parts)."""
    module_name, attr = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # Tests set FEDFLEET_STRICT_CLI=1 so a broken import cannot hide a command.
        if exc.name != module_name and os.environ.get("FEDFLEET_STRICT_CLI") == "1":
            raise
        return None
    return getattr(module, attr, None)


def _with_extensions(name: str, app: typer.Typer) -> typer.Typer:
    """``app`` with the commands :data:`_EXTENSIONS` adds to sub-app ``name``, in a new
    Typer (the packages' own sub-apps are never changed)."""
    parts = [p for p in map(_load, _EXTENSIONS.get(name, ())) if isinstance(p, typer.Typer)]
    if not parts:
        return app
    merged = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
    for part in (*parts, app):
        merged.add_typer(part)  # no name: its commands join the merged app's
    return merged


def build_app() -> typer.Typer:
    """Build the root Typer app with every sub-app that can be imported."""
    app = typer.Typer(
        name="fedfleet",
        help="Federated learning with an edge device fleet.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )

    @app.callback()
    def root(
        version: bool = typer.Option(False, "--version", help="Print the version and exit."),
    ) -> None:
        """Federated learning with an edge device fleet."""
        if version:
            from fedfleet import __version__

            typer.echo(__version__)
            raise typer.Exit()

    for name, target, help_text in _SUBAPPS:
        obj = _load(target)  # None: a missing optional extra, the command is left out
        if obj is None:
            continue
        if isinstance(obj, typer.Typer):
            app.add_typer(_with_extensions(name, obj), name=name, help=help_text)
        else:
            app.command(name=name, help=help_text)(obj)
    return app


def main() -> None:
    """Console-script entry point."""
    app = build_app()
    sys.exit(app())
