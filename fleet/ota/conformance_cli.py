"""``fedfleet device conformance``: check a device agent against the protocol.

Mounted into the ``device`` group by ``fedfleet/cli.py`` (the kit plays the fleet, so it
lives with the fleet's MQTT side; a device install without the fleet's extras simply has
no such command). docs/conformance.md is the vendor's guide. Exit codes: 0 every check
passed; 1 a check failed or was skipped (or the set-up failed); 2 bad input; 130 stopped
by SIGINT/SIGTERM (a partial run is no verdict).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from fedfleet.cli_support import EXIT_FAILURE, fail, sub_app
from fedfleet.stopping import StopSignals, say_stopped

device_commands = sub_app()
EXIT_STOPPED = 130


def _read_secret(path: Path | None, option: str) -> str | None:
    if path is None:
        return None
    try:
        return path.read_text().strip()
    except OSError as err:
        fail(f"{option} {path}: {err.strerror}; give a readable file")


def _discard(folder: Path, work: Path | None) -> None:
    """Bad input leaves nothing behind: a temporary folder made for this run goes."""
    if work is None:
        shutil.rmtree(folder, ignore_errors=True)


def _broker(text: str | None) -> tuple[str, int] | None:
    if text is None:
        return None
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        fail(f"--broker {text!r} must be HOST:PORT, e.g. 127.0.0.1:1883")
    return host, int(port)


@device_commands.command("conformance")
def conformance(
    agent_cmd: Annotated[
        str | None,
        typer.Option(
            "--agent-cmd",
            help="Command that starts your agent; {config} is replaced by the generated "
            "device.toml, {workdir} by the kit's folder. Left out: the agent already runs, "
            "configured from --work's device.toml.",
        ),
    ] = None,
    work: Annotated[
        Path | None,
        typer.Option(help="The kit's folder: keys, device.toml, logs (default: a temporary one)."),
    ] = None,
    device_id: Annotated[str, typer.Option(help="The test device's id.")] = "conformance-device",
    target: Annotated[str, typer.Option(help="Your device's hardware target.")] = "cpu-x86",
    task: Annotated[str, typer.Option(help="Task named in the test bundles.")] = (
        "synthetic-logreg"
    ),
    broker: Annotated[
        str | None,
        typer.Option(help="HOST:PORT of a running broker (default: the kit runs Mosquitto)."),
    ] = None,
    port: Annotated[int, typer.Option(help="Port of the kit's own Mosquitto (0: any).")] = 0,
    mosquitto: Annotated[str, typer.Option(help="The mosquitto executable.")] = "mosquitto",
    fleet_user: Annotated[str, typer.Option(help="Fleet user on --broker.")] = "fedfleet-fleet",
    fleet_password_file: Annotated[
        Path | None, typer.Option(help="Fleet user's password on --broker (fleet.pass).")
    ] = None,
    device_password_file: Annotated[
        Path | None, typer.Option(help="The test device's password on --broker.")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds each wait of a check may take.")] = 30.0,
    only: Annotated[
        str | None, typer.Option(help="Comma-separated checks to run (and what they need).")
    ] = None,
    report: Annotated[
        Path | None, typer.Option(help="Write a report: JUnit XML if it ends in .xml, else JSON.")
    ] = None,
    prepare: Annotated[
        bool,
        typer.Option(
            "--prepare",
            help="Only write --work's keys and device.toml (for an agent you start yourself).",
        ),
    ] = False,
) -> None:
    """Play the fleet over a real broker against a device agent and check each behaviour."""
    from fleet.ota.conformance.kit import KitOptions, StopRequested, line, prepare_folder, run_kit
    from fleet.ota.conformance.report import summary, write_report

    if report is not None and not report.parent.is_dir():
        fail(f"--report {report}: folder {report.parent} does not exist")
    if agent_cmd is None and work is None:
        fail(
            "without --agent-cmd your agent runs on its own: give --work, the folder whose "
            "device.toml it runs with (write it first with --prepare)"
        )
    broker_address = _broker(broker)
    fleet_password = _read_secret(fleet_password_file, "--fleet-password-file")
    device_password = _read_secret(device_password_file, "--device-password-file")
    folder = work or Path(tempfile.mkdtemp(prefix="fedfleet-conformance-"))
    try:
        options = KitOptions(
            work=folder,
            agent_cmd=agent_cmd,
            device_id=device_id,
            target=target,
            task=task,
            broker=broker_address,
            fleet_user=fleet_user,
            fleet_password=fleet_password,
            device_password=device_password,
            port=port,
            mosquitto=mosquitto,
            timeout_s=timeout,
            only=tuple(n.strip() for n in only.split(",") if n.strip()) if only else (),
        )
        if prepare:
            workspace = prepare_folder(options)
    except ValueError as err:
        _discard(folder, work)
        fail(str(err))
    if prepare:
        typer.echo(
            f"wrote {workspace.config} (device {workspace.device_id}); the agent trusts "
            f"{folder / 'bundle.pub'} for bundles and {folder / 'command.pub'} for commands. "
            "Start your agent with it, then run this command again without --prepare."
        )
        return
    results = []
    with StopSignals() as stop:
        try:
            results = run_kit(
                options,
                stop=stop.requested,
                emit=lambda r: typer.echo(line(r)),
            )
        except ValueError as err:
            _discard(folder, work)
            fail(str(err))
        except StopRequested:
            say_stopped("device conformance", stop.signum)
            raise typer.Exit(EXIT_STOPPED) from None
        except RuntimeError as err:  # the kit's own broker did not start
            fail(str(err), EXIT_FAILURE)
        finally:
            conforms = bool(results) and all(r.outcome == "PASS" for r in results)
            if work is None and conforms:
                shutil.rmtree(folder, ignore_errors=True)
    typer.echo(summary(results))
    if not conforms:
        typer.echo(f"the kit's folder (device.toml, agent.log, mosquitto.log): {folder}")
    if report is not None:
        write_report(report, results, device_id=device_id)
    if not conforms:
        raise typer.Exit(EXIT_FAILURE)
