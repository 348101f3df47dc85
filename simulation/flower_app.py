"""``fedfleet simulate --app DIR``: any Flower Message-API app, unchanged, in process.

The app is read the way ``flwr run`` reads it: ``DIR/pyproject.toml`` names the
components (``[tool.flwr.app.components]`` ``serverapp``/``clientapp``) and the default
run config (``[tool.flwr.app.config]``), ``--run-config "k=v k2=v2"`` overrides keys
that exist there (Flower's own parser and merge), and the component objects are
imported with ``DIR`` on ``sys.path`` (Flower's own loader). Simulated clients get the
node config Flower's simulation gives them (``partition-id``, ``num-partitions``).

The ServerApp then runs against the in-process ``Grid``. Its ClientApp is called
message by message — never batched, never interleaved — because nothing is known about
how it trains; a server's ``send_and_receive(timeout=...)`` is honoured per client
(:mod:`simulation.timed_calls`). With ``--devices`` the simulated fleet applies to it
too (availability, dropouts, device time against the timeout); the simulated clock is
kept in fedfleet's own record, never in the app's records or metrics.

The app's output is the app's: Flower's logger keeps its INFO lines (``--quiet``:
warnings and errors only). The app's exceptions come back whole
(:mod:`simulation.app_errors`).

Random state: the ServerApp starts from Python's, numpy's and torch's global
generators seeded from ``--seed``, and each ClientApp call from its own
(:mod:`simulation.app_calls`, which also runs the calls in worker processes when that
is faster): a seeded run repeats, in process or in workers.

The app runs with the run folder as its working directory, so files it writes with
relative paths land there. fedfleet knows nothing about its rounds; it records each
exchange of messages in ``exchanges.json``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import signal
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from rich.console import Console

from privacy.private_files import write_private_bytes
from simulation.app_calls import AppCalls, AppSource, call_seed, own_random_state, parse_app_workers
from simulation.app_errors import ClientErrors, app_raised
from simulation.fleet_settings import FleetFields
from simulation.run_config import RunConfigDict

if TYPE_CHECKING:
    from flwr.app import Message


SERVER_SEED_NODE = 0  # the ServerApp's random state is drawn as this node's (no client's id)


class AppFields(FleetFields, Protocol):
    """The simulate settings ``--app`` reads (the fleet's, plus the app's own)."""

    @property
    def app(self) -> str: ...
    @property
    def app_config(self) -> str: ...
    @property
    def app_workers(self) -> str: ...


@dataclass(frozen=True)
class FlowerApp:
    """A Flower App folder: its component references and its fused run config."""

    app_dir: Path
    serverapp: str
    clientapp: str
    run_config: RunConfigDict


def load_flower_app(app_dir: Path, *, overrides: str = "") -> FlowerApp:
    """Read ``app_dir/pyproject.toml`` and merge ``overrides`` (``"k=v k2=v2"``) into
    its ``[tool.flwr.app.config]``; errors say what to fix."""
    import click
    from flwr.common.config import (
        flatten_dict,
        fuse_dicts,
        get_project_config,
        parse_config_args,
    )

    app_dir = app_dir.resolve()
    try:
        config = get_project_config(app_dir)
    except (FileNotFoundError, ValueError) as exc:
        raise ValueError(f"--app {app_dir}: {exc}".replace("\n", " ")) from None
    app_section = config["tool"]["flwr"]["app"]
    components = app_section["components"]
    items = shlex.split(overrides)
    for item in items:
        if "=" not in item:
            raise ValueError(f"--run-config item {item!r} is not KEY=VALUE, e.g. lr=0.1")
    try:
        # the string as given: Flower's parser reads quoted strings (key="text")
        parsed = parse_config_args([overrides]) if items else {}
    except (click.ClickException, ValueError) as exc:
        message = exc.message if isinstance(exc, click.ClickException) else str(exc)
        raise ValueError(f"--run-config {overrides!r}: {message}") from None
    defaults = flatten_dict(app_section.get("config", {}))
    unknown = sorted(set(parsed) - set(defaults))
    if unknown:
        raise ValueError(
            f"--run-config key {unknown[0]!r} is not in the app's [tool.flwr.app.config]; "
            f"its keys are: {', '.join(sorted(defaults)) or '(none)'}"
        )
    return FlowerApp(
        app_dir=app_dir,
        serverapp=str(components["serverapp"]),
        clientapp=str(components["clientapp"]),
        run_config=fuse_dicts(defaults, parsed),
    )


def validate_app_settings(settings: AppFields, *, fedfleet_flags: Sequence[str]) -> None:
    """Refuse ``--app``/``--run-config`` settings that cannot work, naming the flag to
    change; ``fedfleet_flags`` are the settings of fedfleet's own apps the user set."""
    if settings.app_config and not settings.app:
        raise ValueError("--run-config sets a Flower App's config; it needs --app DIR")
    if not settings.app:
        if settings.app_workers not in ("auto", ""):
            raise ValueError(
                "--app-workers sets how a Flower App's ClientApp runs; it needs --app DIR"
            )
        return
    parse_app_workers(settings.app_workers)
    app_dir = Path(settings.app)
    if not (app_dir / "pyproject.toml").is_file():
        raise ValueError(f"--app {app_dir}: no pyproject.toml there; point it at a Flower App")
    if settings.engine != "inprocess":
        raise ValueError(
            "--app runs on the in-process engine; for Flower's engine use `flwr run DIR`"
        )
    if settings.clients < 1:
        raise ValueError("--clients must be >= 1")
    if "deadline" in fedfleet_flags:
        raise ValueError(
            "--round-deadline is the deadline of fedfleet's own apps and does not apply to "
            "--app; a Flower App sets its own with send_and_receive(timeout=...), which "
            "--app honours in simulated time (with or without --devices)"
        )
    if fedfleet_flags:
        flag = "--" + fedfleet_flags[0].replace("_", "-")
        raise ValueError(
            f"{flag} configures fedfleet's own apps and does not apply "
            "to --app; set the app's own keys with --run-config KEY=VALUE"
        )
    load_flower_app(app_dir, overrides=settings.app_config)


def load_components(app: FlowerApp) -> tuple[Any, Any]:
    """Import the app's ServerApp and ClientApp objects (Flower's loader)."""
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp

    server_app = _load_component(app.serverapp, "ServerApp", app.app_dir)
    client_app = _load_component(app.clientapp, "ClientApp", app.app_dir)
    if not isinstance(server_app, ServerApp):
        raise ValueError(f"--app: {app.serverapp} is not a flwr ServerApp")
    if not isinstance(client_app, ClientApp):
        raise ValueError(f"--app: {app.clientapp} is not a flwr ClientApp")
    return server_app, client_app


def _load_component(ref: str, component: str, app_dir: Path) -> Any:
    """Flower's loader; a reference that names nothing is bad input (``ValueError``),
    an exception the app's own module raised while being imported is the app's
    (:class:`AppRaised`, with its traceback)."""
    from flwr.supercore.object_ref import load_app

    module = ref.partition(":")[0]
    try:
        return load_app(ref, ValueError, project_dir=app_dir)
    except ModuleNotFoundError as exc:
        if exc.name and (module == exc.name or module.startswith(exc.name + ".")):
            raise ValueError(
                f"--app: no module {exc.name!r} in {app_dir} for the {component} "
                f"{ref!r} of [tool.flwr.app.components]"
            ) from None
        raise app_raised(exc, component=component, when="while being imported") from exc
    except ValueError as exc:
        frames = traceback.extract_tb(exc.__traceback__)
        if frames and frames[-1].filename.endswith("object_ref.py"):  # Flower's own check
            raise ValueError(f"--app: {exc}".replace("\n", " ")) from None
        raise app_raised(exc, component=component, when="while being imported") from exc
    except Exception as exc:
        raise app_raised(exc, component=component, when="while being imported") from exc


@contextlib.contextmanager
def working_directory(path: Path) -> Iterator[None]:
    """Run the app with ``path`` as its working directory."""
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def show_app_logs(*, quiet: bool) -> None:
    """The app's output is the app's: Flower's logger at its own default (INFO lines on
    the console: the app's own ``log(INFO, ...)``, a strategy's per-round metrics);
    ``--quiet`` keeps only warnings and errors."""
    logging.getLogger("flwr").setLevel(logging.WARNING if quiet else logging.DEBUG)


@contextlib.contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """SIGTERM stops the run as Ctrl-C does (KeyboardInterrupt), so the ClientApp's
    worker processes are ended on the way out; the previous handler comes back after."""

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def exchange_row(
    number: int, batch: list[Message], replies: list[Message], seconds: float
) -> dict[str, Any]:
    """One row of ``exchanges.json``: what was sent and what came back in time."""
    errors = sum(1 for r in replies if r.has_error())
    return {
        "exchange": number,
        "message_type": ",".join(sorted({m.metadata.message_type for m in batch})),
        "messages": len(batch),
        "replies": len(replies) - errors,
        "errors": errors,
        "timed_out": len(batch) - len(replies),
        "duration_s": seconds,
    }


def run_flower_app(
    settings: AppFields, *, out_dir: Path, console: Console, quiet: bool = False
) -> dict[str, Any]:
    """Run ``settings.app`` in process with ``settings.clients`` clients; write
    ``exchanges.json`` into ``out_dir`` (also when the app raised) and return its
    document. The app's exceptions are raised as :class:`AppRaised`."""
    from simulation.fleet_settings import build_fleet
    from simulation.inprocess import run_inprocess

    app = load_flower_app(Path(settings.app), overrides=settings.app_config)
    server_app, client_app = load_components(app)
    fleet = build_fleet(settings, task=str(app.run_config.get("task", "")))
    exchanges: list[dict[str, Any]] = []
    client_errors = ClientErrors()
    show_app_logs(quiet=quiet)
    calls = AppCalls(
        client_app,
        seed=settings.seed,
        workers=parse_app_workers(settings.app_workers),
        threads=settings.threads,
        on_failure=client_errors,
        source=AppSource(app.clientapp, str(app.app_dir)),  # what a worker loads
    )

    def on_exchange(
        batch: list[Message], replies: list[Message], seconds: float, timeout: float | None
    ) -> None:
        row = exchange_row(len(exchanges) + 1, batch, replies, seconds)
        if fleet is not None:  # the simulated clock: fedfleet's record, not the app's
            stats = fleet.take_stats()
            stats.pop("timed_out")  # the row counts them (with or without a fleet)
            row.update(stats)
            waited = row.get("sim_slowest_s", 0.0)
            if row["timed_out"] and timeout is not None:
                waited = timeout  # the server waited the whole timeout
            fleet.advance_to(fleet.now_s + waited)
            row["sim_time_s"] = fleet.now_s
        row["calls"] = calls.last_mode
        exchanges.append(row)
        console.print(
            f"exchange {row['exchange']:>3}: {row['message_type']} to {len(batch)} clients, "
            f"{row['replies']} replies, {row['errors']} errors, "
            f"{row['timed_out']} timed out, {seconds:.2f}s ({calls.last_mode})"
        )

    started = time.perf_counter()
    doc: dict[str, Any] = {
        "app": str(app.app_dir),
        "components": {"serverapp": app.serverapp, "clientapp": app.clientapp},
        "run_config": app.run_config,
        "clients": settings.clients,
        "exchanges": exchanges,
    }
    try:
        with (
            working_directory(out_dir),
            stop_on_sigterm(),
            contextlib.closing(calls.start()),
            own_random_state(call_seed(settings.seed, SERVER_SEED_NODE, 0)),
        ):
            grid = run_inprocess(
                server_app=server_app,
                client_app=client_app,
                num_nodes=settings.clients,
                run_config=app.run_config,
                fleet=fleet,
                on_exchange=on_exchange,
                app_kind="flower",  # Flower's semantics: simulation/inprocess.py
                app_calls=calls,  # in process or in workers: simulation/app_calls.py
            )
        doc["clients_materialised"] = grid.materialised_clients
        doc["app_workers"] = {
            "workers": calls.pool_size,
            "stuck_calls": calls.stuck,
            "seconds_per_call": {
                f"{kind} {mode}": s for (kind, mode), s in calls.calibration.per_call.items()
            },
        }
    except Exception as exc:
        doc["error"] = f"ServerApp raised {type(exc).__name__}: {exc}"
        raise app_raised(exc) from exc
    finally:
        doc["wall_time_s"] = time.perf_counter() - started
        doc["clientapp_errors"] = client_errors.calls
        write_private_bytes(out_dir / "exchanges.json", json.dumps(doc, indent=2).encode())
    client_errors.raise_if_any()
    return doc
