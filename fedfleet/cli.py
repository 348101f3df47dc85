"""The root ``fedfleet`` command.

It only mounts each package's Typer sub-app (and the commands one package adds to
another's sub-app, :data:`_EXTENSIONS`), lazily: a sub-app's module is imported when its
command is invoked, never for ``fedfleet --help`` or ``fedfleet --version`` (the help
lists the commands from :data:`_SUBAPPS`). Each package's ``cli`` module keeps its heavy
imports (torch, flwr, fastapi, sqlmodel, httpx) inside its command functions, so a
sub-app's ``--help`` and its bad-input errors answer fast too (tests/test_cli_startup.py).
A sub-app whose module cannot be imported for want of an optional dependency (a hospital
site installs no server extras) is left out when invoked ("No such command") instead of
breaking the root; under ``FEDFLEET_STRICT_CLI=1`` (the tests) that import error is raised.
"""

from __future__ import annotations

import importlib
import os
import sys
from difflib import get_close_matches
from typing import Any

import click
import typer
from typer.core import TyperGroup

from fedfleet.cli_support import sub_app

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
    ("policy", "fleet.policy_cli:policy_app", "Promotion policies: apply, list, show, approve."),
    ("model", "coordinator.model_cli:model_app", "The model registry: register a run's model."),
    ("report", "coordinator.report.cli:report", "A run's compliance report (HTML or PDF)."),
    ("image", "firmware_images.cli:image_app", "Build, verify, inspect, publish signed bundles."),
    ("keys", "firmware_images.cli:keys_app", "Ed25519 signing keys."),
)
_BY_NAME = {name: (target, help_text) for name, target, help_text in _SUBAPPS}

# Commands other packages add to a sub-app above, listed before the sub-app's own: the
# admin CLI (fleet/cli.py) never imports the fleet's OTA side (fleet/ota/) nor the
# simulator (DESIGN), so `fedfleet fleet broker-config|mqtt|simulate-devices` join here.
_EXTENSIONS: dict[str, tuple[str, ...]] = {
    "fleet": ("fleet.ota.cli:fleet_commands", "simulation.fleet_devices_cli:fleet_commands"),
    # The conformance kit plays the fleet's side, so it lives in fleet/ota/.
    "device": ("fleet.ota.conformance_cli:device_commands",),
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
    merged = sub_app()
    for part in parts:
        merged.add_typer(part)  # no name: its commands join the merged app's
    if app.registered_callback is None:
        merged.add_typer(app)
    else:
        # typer ignores (with a warning) the callback of a nameless add_typer: an app with
        # one (`device`: its group's help) gives the merged app its commands and callback.
        merged.registered_commands.extend(app.registered_commands)
        merged.registered_groups.extend(app.registered_groups)
        merged.registered_callback = app.registered_callback
    return merged


def _mounted(name: str) -> click.Command | None:
    """Import sub-app ``name`` and build its click command as if mounted on the root with
    ``add_typer``/``command`` (same name, help and markup); None if it cannot be imported."""
    target, help_text = _BY_NAME[name]
    obj = _load(target)  # None: a missing optional extra, the command is left out
    if obj is None:
        return None
    holder = typer.Typer(add_completion=False)
    holder.callback()(lambda: None)  # always a group, so the command is holder's child
    if isinstance(obj, typer.Typer):
        holder.add_typer(_with_extensions(name, obj), name=name, help=help_text)
    else:
        holder.command(name=name, help=help_text)(obj)
    group = typer.main.get_command(holder)
    if not isinstance(group, click.Group):  # pragma: no cover - a callback makes it a group
        raise TypeError(f"typer built {type(group).__name__} for the holder of {name}")
    return group.commands.get(name)


class LazyGroup(TyperGroup):
    """The root group: lists :data:`_SUBAPPS` without importing them and imports one
    sub-app when its command is resolved."""

    _listing = False  # while help is rendered: placeholders carry each command's help

    def list_commands(self, ctx: click.Context) -> list[str]:
        # The table's order, whichever sub-apps were imported already.
        return [*_BY_NAME, *(name for name in self.commands if name not in _BY_NAME)]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands:
            return self.commands[cmd_name]
        if cmd_name not in _BY_NAME:
            return None
        if self._listing:
            return click.Command(cmd_name, help=_BY_NAME[cmd_name][1])
        command = _mounted(cmd_name)
        if command is not None:
            self.commands[cmd_name] = command
        return command

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        try:
            return click.Group.resolve_command(self, ctx, args)
        except click.UsageError as exc:  # typer's "Did you mean", over the lazy names
            matches = get_close_matches(args[0], self.list_commands(ctx)) if args else []
            if not matches:
                raise
            suggestions = ", ".join(f"{m!r}" for m in matches)
            message = f"{exc.message.rstrip('.')}. Did you mean {suggestions}?"
            raise click.UsageError(message, ctx=exc.ctx) from None


def _print_version(value: bool) -> None:
    """``--version``: eager, so it answers before click asks for a command."""
    if value:
        from fedfleet import __version__

        typer.echo(__version__)
        raise typer.Exit()


def build_app() -> typer.Typer:
    """Build the root Typer app; its sub-apps are imported when their command runs."""
    app = typer.Typer(
        name="fedfleet",
        help="Federated learning with an edge device fleet.",
        cls=LazyGroup,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )

    @app.callback()
    def root(
        version: bool = typer.Option(
            False,
            "--version",
            help="Print the version and exit.",
            callback=_print_version,
            is_eager=True,  # before click asks for a command
        ),
    ) -> None:
        """Federated learning with an edge device fleet."""

    return app


def main() -> None:
    """Console-script entry point."""
    app = build_app()
    sys.exit(app())
