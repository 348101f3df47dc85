"""The root ``fedfleet`` command.

It only mounts each package's Typer sub-app. Sub-apps are imported when the process
starts, so each package's ``cli`` module must keep heavy imports (torch, flwr, fastapi)
inside its command functions. A sub-app whose optional dependencies are not installed
(a hospital site installs no server extras) is left out instead of breaking the command.
"""

from __future__ import annotations

import importlib
import os
import sys

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
    ("rollout", "fleet.cli:rollout_app", "Staged OTA rollouts."),
    ("model", "coordinator.model_cli:model_app", "The model registry: register a run's model."),
    ("image", "firmware_images.cli:image_app", "Build, verify, inspect, publish signed bundles."),
    ("keys", "firmware_images.cli:keys_app", "Ed25519 signing keys."),
)


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
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            # A missing optional extra (a site installs no server parts): leave it out.
            # Tests set FEDFLEET_STRICT_CLI=1 so a broken import cannot hide a command.
            if exc.name != module_name and os.environ.get("FEDFLEET_STRICT_CLI") == "1":
                raise
            continue
        obj = getattr(module, attr, None)
        if obj is None:
            continue
        if isinstance(obj, typer.Typer):
            app.add_typer(obj, name=name, help=help_text)
        else:
            app.command(name=name, help=help_text)(obj)
    return app


def main() -> None:
    """Console-script entry point."""
    app = build_app()
    sys.exit(app())
