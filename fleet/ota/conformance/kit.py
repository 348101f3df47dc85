"""One conformance run: set up, run the checks in order, tear everything down.

:func:`run_kit` prepares the kit's folder (:mod:`.workspace`), starts the kit's own
Mosquitto unless a broker is given, builds the signed test bundles, connects the fleet's
session, starts the vendor's agent (``agent_cmd``; else the agent is already running,
configured from the folder's ``device.toml``), then runs each check and reports its line
as soon as it ends. Whatever happens — a failure, an exception, a stop request — the
agent and the broker it started are stopped before it returns.
"""

from __future__ import annotations

import shlex
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edge_client.protocol.mqtt import check_device_id
from fleet.ota.conformance.checks import Check, Context, select
from fleet.ota.conformance.fleet_side import CheckFailed, FleetSide, StopRequested
from fleet.ota.conformance.report import Result, line
from fleet.ota.conformance.workspace import (
    AgentProcess,
    KitBroker,
    Workspace,
    build_bundles,
    free_port,
    fresh_state,
    prepare,
)


@dataclass(frozen=True)
class KitOptions:
    """A run's settings (the command's options; docs/conformance.md explains each).

    ``broker``: ``(host, port)`` of a running broker (None: the kit starts Mosquitto on
    ``port``, 0 = any free port); ``fleet_password``/``device_password``: the credentials
    on that broker (the kit's own broker uses its generated ones)."""

    work: Path
    agent_cmd: str | None = None
    device_id: str = "conformance-device"
    target: str = "cpu-x86"
    task: str = "synthetic-logreg"
    broker: tuple[str, int] | None = None
    fleet_user: str = "fedfleet-fleet"
    fleet_password: str | None = None
    device_password: str | None = None
    port: int = 0
    mosquitto: str = "mosquitto"
    timeout_s: float = 30.0
    only: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.timeout_s <= 0:
            raise ValueError("--timeout must be positive seconds")
        if self.agent_cmd is not None:
            try:
                words = shlex.split(self.agent_cmd)
            except ValueError as err:
                raise ValueError(f"--agent-cmd: {err}; quote it as a shell would") from None
            if not words:
                raise ValueError("--agent-cmd is empty; give the command that starts your agent")
        if self.agent_cmd is None and self.broker is None and self.port == 0:
            raise ValueError(
                "an agent you start yourself needs a fixed broker port: give --port (the "
                "port its device.toml names) or --broker HOST:PORT"
            )
        if self.broker is not None and (self.fleet_password is None or not self.device_password):
            raise ValueError(
                "with --broker, give --fleet-password-file and --device-password-file "
                "(the kit connects as the fleet and, to cut the device's link, as the device)"
            )


class _Run:
    """The parts one run started, stopped in reverse order by :meth:`close`."""

    def __init__(self) -> None:
        self.broker: KitBroker | None = None
        self.fleet: FleetSide | None = None
        self.agent: AgentProcess | None = None

    def close(self) -> None:
        if self.agent is not None:
            self.agent.stop()
        if self.fleet is not None:
            self.fleet.close()
        if self.broker is not None:
            self.broker.stop()


def _address(options: KitOptions) -> tuple[str, int]:
    if options.broker is not None:
        return options.broker
    return "127.0.0.1", options.port or free_port()


def prepare_folder(options: KitOptions) -> Workspace:
    """Write the kit's folder (keys, ``device.toml``) for ``options``; ValueError on bad
    input."""
    check_device_id(options.device_id)  # before the folder is made
    host, chosen = _address(options)
    return prepare(
        options.work,
        device_id=options.device_id,
        target=options.target,
        task=options.task,
        host=host,
        port=chosen,
        password=options.device_password,
    )


def run_kit(
    options: KitOptions, *, stop: threading.Event, emit: Callable[[Result], None]
) -> list[Result]:
    """Run the selected checks; ``emit`` gets each result as it ends. Raises ValueError
    for bad input (before anything starts), :class:`StopRequested` when ``stop`` is set."""
    checks = select(list(options.only))
    workspace = prepare_folder(options)
    host, port = workspace.host, workspace.port
    run = _Run()
    try:
        fleet_user, fleet_password = options.fleet_user, options.fleet_password or ""
        if options.broker is None:
            run.broker = KitBroker(workspace, port=port, executable=options.mosquitto)
            run.broker.start()
            fleet_user, fleet_password = run.broker.fleet_user, run.broker.fleet_password
        if options.agent_cmd is not None:
            fresh_state(workspace)
            run.agent = AgentProcess(options.agent_cmd, workspace)
        bundles = build_bundles(workspace)
        run.fleet = FleetSide(
            host=host,
            port=port,
            username=fleet_user,
            password=fleet_password,
            device_id=workspace.device_id,
            command_key=workspace.command_key,
            stop=stop,
        )
        run.fleet.start(timeout_s=options.timeout_s)
        if run.agent is not None:
            run.agent.start()
            run.fleet.watch = run.agent.gone
        ctx = Context(
            fleet=run.fleet,
            bundles=bundles,
            target=workspace.target,
            device_password=workspace.device_password,
            timeout_s=options.timeout_s,
        )
        return _run_checks(checks, ctx, run.agent, emit)
    finally:
        run.close()


def _run_checks(
    checks: tuple[Check, ...],
    ctx: Context,
    agent: AgentProcess | None,
    emit: Callable[[Result], None],
) -> list[Result]:
    results: list[Result] = []
    outcome: dict[str, str] = {}
    for check in checks:
        began = time.monotonic()
        failed_needs = [n for n in check.needs if outcome.get(n) != "PASS"]
        gone = agent.gone() if agent is not None else None
        if failed_needs:
            result = Result(
                check.name, "SKIP", f"needs {', '.join(failed_needs)}", 0.0, check.waits_for
            )
        elif gone is not None:
            result = Result(check.name, "FAIL", gone, 0.0, check.waits_for)
        else:
            try:
                detail = check.body(ctx)
                result = Result(
                    check.name, "PASS", detail, time.monotonic() - began, check.waits_for
                )
            except CheckFailed as err:
                result = Result(
                    check.name, "FAIL", str(err), time.monotonic() - began, check.waits_for
                )
            except StopRequested:
                raise
        outcome[check.name] = result.outcome
        results.append(result)
        emit(result)
    return results


__all__ = ["KitOptions", "Result", "StopRequested", "line", "run_kit"]
