"""What every ``fedfleet`` command shares: the exit codes, :func:`fail`, the sub-app
factory and the options several packages take.

Every package's ``cli`` module may import this one (device-side ones included): it
imports nothing of fedfleet and nothing heavier than typer, so ``fedfleet --help`` and a
device's ``fedfleet device run`` stay fast and carry no server code.

Exit codes (README.md, "Exit codes"):

- 0 (:data:`EXIT_OK`): done;
- 1 (:data:`EXIT_FAILURE`): the operation was tried and failed: a server unreachable or
  refusing, a process that died, a build or check that did not pass, a timeout;
- 2 (:data:`EXIT_BAD_INPUT`): the command line or a file it names is wrong and the user
  can fix it (click's own usage errors exit 2 too).
"""

from __future__ import annotations

from typing import Annotated, Any, NoReturn

import typer

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2


def fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    """Print ``error: MESSAGE`` as one line on stderr and exit with ``code``.

    ``message`` says what was wrong and how to fix it; ``code`` is :data:`EXIT_BAD_INPUT`
    for input the user can fix, :data:`EXIT_FAILURE` when the operation itself failed.
    """
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def sub_app(name: str | None = None, help: str | None = None) -> typer.Typer:
    """A package's Typer sub-app: bare invocation shows help, no shell-completion
    options, and errors print as one line instead of a rich traceback.

    ``name``/``help`` are shown when the module runs on its own (``python -m``); mounted
    under ``fedfleet``, the root's table (fedfleet/cli.py) names it and gives its help.
    """
    explicit: dict[str, Any] = {}
    if name is not None:
        explicit["name"] = name
    if help is not None:  # typer treats an explicit None as "no help", over docstrings
        explicit["help"] = help
    return typer.Typer(
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        **explicit,
    )


FleetUrl = Annotated[
    str | None,
    typer.Option(
        "--fleet-url",
        help="The fleet API's address (default: $FEDFLEET_URL, else http://127.0.0.1:8080). "
        "The token is read from $FEDFLEET_TOKEN only.",
        show_default=False,
    ),
]
"""``--fleet-url``: where a command reaches the fleet's HTTP API (fleet.client)."""

DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="sqlite:///PATH or postgresql://USER@HOST:PORT/DB "
        "(default: $FEDFLEET_FLEET_DATABASE_URL, else fleet-data/fleet.db).",
        show_default=False,
    ),
]
"""``--database-url``: the fleet's database, for commands that run on the fleet's host."""
