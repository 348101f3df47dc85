"""``fedfleet device ...``: run the MQTT device agent."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from fedfleet.cli_support import fail, sub_app
from fedfleet.stopping import StopSignals, say_stopped

app = sub_app(help="The MQTT device agent.")


@app.callback()
def _root() -> None:
    """The MQTT device agent."""


@app.command()
def run(
    config: Annotated[Path, typer.Option("--config", help="The device.toml to run with.")],
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Connect to the broker, report status, install rollouts and serve inference."""
    level = getattr(logging, log_level.upper(), None)
    if not isinstance(level, int):
        fail(f"--log-level {log_level!r} is not one of debug, info, warning, error")
    from edge_client.device_config import load_config
    from firmware_images.errors import KeyFileError

    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with StopSignals() as stop:  # a signal while starting stops it too, no traceback
        try:
            settings = load_config(config)  # before the agent's imports (numpy, paho)
            from edge_client.device_agent import DeviceAgent

            agent = DeviceAgent(settings)
        except (ValueError, OSError, KeyFileError) as err:
            fail(str(err))
        agent.start()
        try:
            model = agent.model
            typer.echo(
                f"device {settings.device_id} running "
                f"{model.meta.version + ' (slot ' + model.slot + ')' if model else 'no model yet'}"
                f"; broker {settings.broker.host}:{settings.broker.port}",
            )
            sys.stdout.flush()
            stop.wait()
        finally:
            agent.stop()  # says offline, disconnects, waits for its worker
    say_stopped(f"device {settings.device_id}", stop.signum)


if __name__ == "__main__":  # pragma: no cover - `python -m edge_client.device_cli run ...`
    app()
