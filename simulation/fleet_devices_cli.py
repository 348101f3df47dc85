"""``fedfleet fleet simulate-devices``: N real device agents against a real fleet.

``--count N --target cpu-x86 [--processes K]`` runs N agents in this process (or split
over K worker processes), enrolled through the fleet API (``--fleet-url``/``$FEDFLEET_URL``,
an operator token in ``$FEDFLEET_TOKEN``) on first use and reused after
(:mod:`simulation.fleet_devices`). The command is shown under ``fedfleet fleet``: the root
CLI (``fedfleet/cli.py``) mounts it there, as ``fleet/`` never imports the simulator.

Heavy imports stay inside the command. Errors: one line on stderr, non-zero exit.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from fedfleet.cli_support import EXIT_FAILURE, FleetUrl, fail, sub_app
from fleet.ota.cli import BrokerHost, BrokerPort

fleet_commands = sub_app()


def simulate_devices(
    count: Annotated[int, typer.Option("--count", help="Number of simulated devices.")] = 10,
    target: Annotated[str, typer.Option(help="Hardware target of the devices.")] = "cpu-x86",
    group: Annotated[str, typer.Option(help="Group to enroll them into.")] = "simulated",
    public_key: Annotated[
        Path, typer.Option(help="Ed25519 public key the bundles are signed with.")
    ] = Path("fleet.pub"),
    work_dir: Annotated[Path, typer.Option(help="Slots and credentials folder.")] = Path(
        "sim-devices"
    ),
    broker_host: BrokerHost = "127.0.0.1",
    broker_port: BrokerPort = 1883,
    seconds: Annotated[
        float, typer.Option(help="Stop after this many seconds (0 = until Ctrl-C).")
    ] = 0.0,
    processes: Annotated[
        int,
        typer.Option(
            "--processes",
            help="Worker processes the agents are split over (1 = all in this process; "
            "one per core uses every core, as N real devices' CPUs would).",
        ),
    ] = 1,
    fleet_url: FleetUrl = None,
) -> None:
    """Run N device agents (enrolled on first use, reused after) in 1..K processes."""
    from edge_client.device_config import BrokerSettings
    from simulation.fleet_devices import (
        ProcessFleet,
        SimulatedFleet,
        load_credentials,
        save_credentials,
    )

    if not 1 <= count <= 5000:
        fail("--count must be 1..5000")
    if not 1 <= processes <= count:
        fail(f"--processes must be 1..--count ({count}); one per core is usually best")
    if not public_key.is_file():
        fail(f"--public-key {public_key} not found; give the key bundles are signed with")
    creds_file = work_dir / "devices.json"
    if creds_file.is_file():
        try:
            devices = load_credentials(creds_file)
        except ValueError as err:
            fail(str(err))
    else:
        devices = []
    if len(devices) < count:
        enrolled, error = _enroll(fleet_url, count=count - len(devices), group=group, target=target)
        if enrolled:
            work_dir.mkdir(parents=True, exist_ok=True)  # only once there is something to keep
            save_credentials(devices + enrolled, creds_file)
        if error:
            kept = f" ({len(enrolled)} enrolled first, kept in {creds_file})" if enrolled else ""
            fail(error + kept, EXIT_FAILURE)
        devices += enrolled
        typer.echo(
            f"enrolled devices (credentials in {creds_file}); `fedfleet fleet mqtt "
            "--broker-pid PID` gives them to the broker within a second (without it, rerun "
            "`fedfleet fleet broker-config` and reload Mosquitto)",
            err=True,
        )
    options: dict[str, Any] = {
        "root": work_dir,
        "target": target,
        "public_key": public_key,
        "broker": BrokerSettings(host=broker_host, port=broker_port),
    }
    sim: SimulatedFleet | ProcessFleet = (
        SimulatedFleet(devices[:count], **options)
        if processes == 1
        else ProcessFleet(devices[:count], processes=processes, **options)
    )
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    sim.start()
    typer.echo(
        f"{count} simulated {target} devices in {processes} process(es) running against "
        f"{broker_host}:{broker_port}"
    )
    began = time.monotonic()
    while not done.wait(1.0):
        if seconds and time.monotonic() - began >= seconds:
            break
    sim.stop()


def _enroll(fleet_url: str | None, *, count: int, group: str, target: str) -> tuple[list[Any], str]:
    """Enroll ``count`` devices over the fleet API: those enrolled, and the error ("" if
    none) that stopped it early."""
    from fleet.client import FleetClient, FleetError, connection_from_env
    from simulation.fleet_devices import SimDevice, enroll_devices_over_api

    enrolled: list[SimDevice] = []
    try:
        with FleetClient(connection_from_env(fleet_url)) as client:
            enroll_devices_over_api(client, count=count, group=group, target=target, into=enrolled)
    except FleetError as err:
        return enrolled, str(err)
    return enrolled, ""


fleet_commands.command("simulate-devices")(simulate_devices)
