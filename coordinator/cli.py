"""``fedfleet coordinator``, ``fedfleet run`` and ``fedfleet certs``: the operator's commands.

Heavy imports stay inside the commands so ``fedfleet --help`` stays fast. Every
failure is one ``error: ...`` line on stderr; the exit code is 2 for input the user can
fix and 1 when the operation failed (``fedfleet.cli_support``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from fedfleet.cli_support import EXIT_FAILURE, FleetUrl, fail, sub_app

coordinator_app = sub_app()
run_app = sub_app()
certs_app = sub_app()

CoordinatorOpt = Annotated[
    Path,
    typer.Option("--coordinator", "-c", help="The coordinator.toml of the SuperLink."),
]


def _settings(path: Path) -> Any:
    from coordinator.superlink import CoordinatorSettings

    try:
        return CoordinatorSettings.load(path)
    except ValueError as exc:
        fail(str(exc))


# --- certs ---------------------------------------------------------------------------


@certs_app.callback()
def certs() -> None:
    """Create a development CA and TLS certificates."""


@certs_app.command("create")
def certs_create(
    out: Annotated[
        Path, typer.Option(help="Folder for ca.crt/ca.key/server.crt/server.key.")
    ] = Path("certs"),
    host: Annotated[
        list[str] | None,
        typer.Option(
            help="Address sites dial (repeatable); 127.0.0.1 and localhost are always added "
            "(the coordinator's own processes reach the SuperLink on loopback)."
        ),
    ] = None,
    days: Annotated[int, typer.Option(help="Validity of the certificates in days.")] = 365,
    force: Annotated[bool, typer.Option(help="Replace existing files.")] = False,
) -> None:
    """Create a development CA and a server certificate signed by it."""
    from coordinator.certs import DEFAULT_HOSTS, create_dev_ca

    try:
        hosts = tuple(dict.fromkeys([*(host or []), *DEFAULT_HOSTS]))
        paths = create_dev_ca(out, hosts=hosts, days=days, overwrite=force)
    except ValueError as exc:
        fail(str(exc))
    typer.echo(f"CA certificate (give to sites): {paths.ca_cert}")
    typer.echo(f"server certificate and key:     {paths.server_cert}, {paths.server_key}")


@certs_app.command("create-operator")
def certs_create_operator(
    name: Annotated[str, typer.Argument(help="The operator's name (letters, digits, - _).")],
    out: Annotated[
        Path, typer.Option(help="Folder of operator-ca.crt/.key and the new certificate.")
    ] = Path("certs"),
    days: Annotated[int, typer.Option(help="Validity of the certificate in days.")] = 365,
    force: Annotated[bool, typer.Option(help="Replace this operator's files.")] = False,
) -> None:
    """Issue an operator a client certificate for the remote Control API
    (superlink.operator-address); creates the operator CA on first use."""
    from coordinator.certs import create_operator_cert

    try:
        paths = create_operator_cert(out, name=name, days=days, overwrite=force)
    except ValueError as exc:
        fail(str(exc))
    typer.echo(f"operator CA (tls.operator-ca): {paths.operator_ca}")
    typer.echo(f"client certificate and key:    {paths.certificate}, {paths.private_key}")


# --- coordinator -----------------------------------------------------------------------


@coordinator_app.command("init")
def coordinator_init(
    out: Annotated[Path, typer.Option(help="Where to write it.")] = Path("coordinator.toml"),
    force: Annotated[bool, typer.Option(help="Replace an existing file.")] = False,
) -> None:
    """Write a commented coordinator.toml that `coordinator up` accepts as is."""
    from coordinator.settings_template import write_coordinator_toml

    try:
        write_coordinator_toml(out, force=force)
    except ValueError as exc:
        fail(str(exc))
    typer.echo(
        f"wrote {out}; next: `fedfleet certs create --out {out.parent / 'certs'}`, then "
        f"`fedfleet coordinator up --config {out}`"
    )


@coordinator_app.command("up")
def coordinator_up(
    config: Annotated[Path, typer.Option(help="coordinator.toml")] = Path("coordinator.toml"),
) -> None:
    """Start the SuperLink (TLS, SuperNode authentication, persistent database) on the
    loopback control address, serve only its Fleet API on the public address, and stay
    in the foreground until Ctrl-C."""
    import logging

    from coordinator.front import CoordinatorFront
    from coordinator.superlink import join_host_port

    settings = _settings(config)
    from privacy.private_files import open_private, private_dir

    private_dir(settings.state_dir)
    log_path = settings.state_dir / "superlink.log"
    with os.fdopen(open_private(log_path, os.O_WRONLY | os.O_APPEND), "ab") as log_file:
        front = CoordinatorFront(settings, log_file=log_file)
        try:
            front.start()
        except (ValueError, OSError) as exc:  # the configuration, its certificates, a port
            fail(f"{exc} ({log_path})")
        except (RuntimeError, TimeoutError) as exc:  # the SuperLink did not come up
            fail(f"{exc} ({log_path})", EXIT_FAILURE)
        operator_address = join_host_port(settings.operator_host, settings.operator_port)
        operators = (
            f"; operators (mutual TLS) on https://{operator_address}"
            if settings.operator_port
            else ""
        )
        typer.echo(
            f"Fleet API on https://{settings.address} (TLS, SuperNode authentication on); "
            f"Control API on https://{settings.control_address} (this host only){operators}; "
            f"database {settings.database}; log {log_path}. Ctrl-C stops it."
        )
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per forwarded call
        reason = front.serve()
    if reason:
        fail(f"{reason}; see {log_path}", EXIT_FAILURE)
    from fedfleet.stopping import say_stopped

    say_stopped("coordinator")  # serve() returns "" only when SIGINT/SIGTERM stopped it


@coordinator_app.command("add-site")
def coordinator_add_site(
    name: Annotated[str, typer.Argument(help="The site's name (as in its site.toml).")],
    public_key: Annotated[Path, typer.Option(help="The site's public key file (NAME.pub).")],
    coordinator: CoordinatorOpt = Path("coordinator.toml"),
    region: Annotated[
        str | None,
        typer.Option(
            help="The site's grid region as the run's carbon-trace names it (e.g. DE), "
            "for carbon-aware selection; a run's node-regions overrides it."
        ),
    ] = None,
) -> None:
    """Register a site's public key: only registered SuperNodes may connect."""
    from coordinator.superlink import register_site

    settings = _settings(coordinator)
    try:
        node_id = register_site(settings, name=name, public_key=public_key, region=region)
    except ValueError as exc:
        fail(str(exc))
    except subprocess.TimeoutExpired as exc:
        fail(str(exc), EXIT_FAILURE)
    typer.echo(f"site {name} registered as node {node_id}" + (f" in {region}" if region else ""))


# --- runs ------------------------------------------------------------------------------


def _flwr_run(settings: Any, state: Any) -> int:
    """Submit the run's app to the SuperLink; return Flower's run id."""
    from coordinator.superlink import CONNECTION, flwr_json

    try:
        doc = flwr_json(settings, ["run", str(state.app_dir), CONNECTION], timeout=300)
    except ValueError as exc:
        fail(f"the SuperLink at {settings.control_address} refused the run: {exc}", EXIT_FAILURE)
    flower_run = int(doc["run-id"])
    state.flower_runs.append(flower_run)
    state.save()
    return flower_run


def _follow(settings: Any, state: Any, timeout: float) -> None:
    """Show the run's progress until it finishes; a failure ends it at once with the
    cause (exit 1), a timeout with exit 2."""
    from rich.progress import Progress

    deadline = time.monotonic() + timeout
    next_flower_check = time.monotonic() + 3.0
    with Progress(transient=True) as progress:
        bar = progress.add_task(f"{state.run_id}", total=state.num_rounds)
        while not state.finished:
            progress.update(bar, completed=state.completed_rounds)
            ask_flower = time.monotonic() >= next_flower_check
            if ask_flower:  # each `flwr ls` is a process start: every 5 s is enough
                next_flower_check = time.monotonic() + 5.0
            cause = _failure(settings, state, ask_flower=ask_flower)
            if cause is not None:
                progress.stop()
                _run_failed(state, cause)
            if time.monotonic() > deadline:
                fail(
                    f"run {state.run_id} did not finish within {timeout:.0f} s; "
                    f"see `fedfleet run status {state.run_id}`",
                    EXIT_FAILURE,
                )
            time.sleep(1.0)
    _print_rounds(state)


def _failure(settings: Any, state: Any, *, ask_flower: bool) -> str | None:
    """Why the run failed, or None while it runs or once it finished (see
    :mod:`coordinator.run_outcome`); an unreachable SuperLink is not a failure."""
    from coordinator.run_outcome import flower_failure, recorded_failure

    flower_run = state.flower_runs[-1] if state.flower_runs else None
    cause = recorded_failure(state.status(), flower_run)
    if cause is not None or not ask_flower or flower_run is None or state.finished:
        return cause
    try:
        return flower_failure(settings, flower_run, done=lambda: state.finished)
    except (ValueError, subprocess.TimeoutExpired):
        return None


def _run_failed(state: Any, cause: str) -> NoReturn:
    typer.echo(f"error: run {state.run_id} failed: {cause}", err=True)
    raise typer.Exit(code=EXIT_FAILURE)


RegisterOpt = Annotated[
    bool,
    typer.Option(
        "--register",
        help="When the run finishes (implies --wait), register its model in the fleet's "
        "registry with its lineage ($FEDFLEET_TOKEN, an operator token).",
    ),
]


@run_app.command("submit")
def run_submit(
    config: Annotated[Path, typer.Option(help="run.toml with a \\[run] table of run-config keys.")],
    coordinator: CoordinatorOpt = Path("coordinator.toml"),
    wait: Annotated[bool, typer.Option(help="Follow the run until it finishes.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds --wait waits at most.")] = 3600.0,
    register: RegisterOpt = False,
    fleet_url: FleetUrl = None,
    retrain: Annotated[
        int | None,
        typer.Option(
            "--retrain",
            help="Execute the fleet's retraining run RUN (created from a drift event): start "
            "from the deployed model's checkpoint and register the result into that run "
            "(implies --register).",
            show_default=False,
            min=1,
        ),
    ] = None,
) -> None:
    """Submit a run to the coordinator over TLS; prints its run id."""
    from coordinator.run_state import RunState, parse_run_toml

    settings = _settings(coordinator)
    try:
        run_config = parse_run_toml(config)
    except ValueError as exc:
        fail(str(exc))
    register = register or retrain is not None
    connection = _registry_connection(fleet_url) if register else None
    plan = None
    if retrain is not None:
        plan = _prepare_retrain(connection, retrain, settings.state_dir / "models")
        try:
            run_config = plan.run_config(run_config)
        except ValueError as exc:
            fail(str(exc))
    _preflight(settings, run_config)
    state = RunState.create(settings.state_dir, run_config)
    flower_run = _flwr_run(settings, state)
    typer.echo(state.run_id)
    typer.echo(f"submitted as Flower run {flower_run}; state in {state.run_dir}", err=True)
    if plan is not None:
        _mark_running(connection, plan)
    if wait or register:
        try:
            _follow(settings, state, timeout)
        except typer.Exit:  # failed or timed out: the fleet run must not stay `running`
            if plan is not None:  # (a run held by the budget pre-flight says so)
                _mark_failed(connection, plan, _failure(settings, state, ask_flower=True))
            raise
    if connection is not None:
        _register(state, connection, plan)


@run_app.command("autopilot")
def run_autopilot(
    config: Annotated[
        Path,
        typer.Option(
            help="run.toml used for every retraining run (--retrain fills in the task and initial model)."
        ),
    ],
    coordinator: CoordinatorOpt = Path("coordinator.toml"),
    fleet_url: FleetUrl = None,
    interval: Annotated[
        float, typer.Option("--interval", min=1.0, help="Seconds between two looks at the fleet.")
    ] = 30.0,
    timeout: Annotated[float, typer.Option(help="Seconds one run may take at most.")] = 3600.0,
    once: Annotated[
        bool, typer.Option("--once", help="Execute what waits now, then exit.")
    ] = False,
) -> None:
    """Execute the fleet's drift-started retraining runs as they appear (each like
    `run submit --retrain RUN`); their models then follow the group's promotion policy."""
    import time

    from coordinator.autopilot import retry_later, waiting_retrains
    from coordinator.run_state import parse_run_toml
    from fleet.client import FleetClient, FleetError

    _settings(coordinator)
    try:
        parse_run_toml(config)
    except ValueError as exc:
        fail(str(exc))
    connection = _registry_connection(fleet_url)
    tried: set[int] = set()
    while True:
        try:
            with FleetClient(connection) as client:
                todo = waiting_retrains(client.list_runs(status="created"), tried=tried)
        except FleetError as err:
            if not retry_later(err, once=once):
                fail(str(err), EXIT_FAILURE)
            typer.echo(f"autopilot: {err}; trying again in {interval:g} s", err=True)
            todo = []
        if not todo and once:
            typer.echo("no retraining run waiting", err=True)
        for run_id in todo:
            tried.add(run_id)
            typer.echo(f"autopilot: executing fleet run {run_id}", err=True)
            try:
                run_submit(
                    config=config,
                    coordinator=coordinator,
                    wait=True,
                    timeout=timeout,
                    register=True,
                    fleet_url=fleet_url,
                    retrain=run_id,
                )
            except typer.Exit as stop:  # its one line is printed; the next run still goes
                typer.echo(
                    f"autopilot: fleet run {run_id} ended with exit {stop.exit_code}", err=True
                )
        if once:
            return
        time.sleep(interval)


def _preflight(settings: Any, run_config: dict[str, Any]) -> None:
    """Refuse now what the ServerApp would refuse later (secure aggregation's sites...)."""
    from coordinator.preflight import check_run_config, registered_sites

    def registered() -> int:
        try:
            return registered_sites(settings)
        except (ValueError, subprocess.TimeoutExpired) as exc:
            fail(f"could not list the sites registered at {settings.address}: {exc}")

    try:
        check_run_config(run_config, registered=registered)
    except ValueError as exc:
        fail(f"run config refused: {exc}")


def _registry_connection(fleet_url: str | None) -> Any:
    """Checked before the run starts, so a missing token fails now, not hours later."""
    from fleet.client import FleetError, connection_from_env

    try:
        return connection_from_env(fleet_url)
    except FleetError as err:
        fail(str(err))


def _prepare_retrain(connection: Any, fleet_run: int, models_dir: Path) -> Any:
    from coordinator.retrain import prepare_retrain
    from fleet.client import FleetClient, FleetError

    with FleetClient(connection) as client:
        try:
            return prepare_retrain(client, fleet_run, dest_dir=models_dir)
        except FleetError as err:  # the fleet refused or cannot be reached
            fail(str(err), EXIT_FAILURE)


def _mark_running(connection: Any, plan: Any) -> None:
    from coordinator.retrain import mark_running
    from fleet.client import FleetClient, FleetError

    with FleetClient(connection) as client:
        try:
            mark_running(client, plan)
        except FleetError as err:  # the run goes on; registering at the end retries
            typer.echo(f"warning: {err}", err=True)


def _mark_failed(connection: Any, plan: Any, cause: str | None) -> None:
    from coordinator.retrain import mark_failed
    from fleet.client import FleetClient, FleetError

    if cause is None:  # a timeout: this command stops following and registering it
        cause = "the coordinator stopped following the run (timed out); nothing was registered"
    with FleetClient(connection) as client:
        try:
            mark_failed(client, plan, cause)
        except FleetError as err:
            typer.echo(f"warning: {err}", err=True)


def _register(state: Any, connection: Any, plan: Any = None) -> None:
    from coordinator.model_cli import register_and_report

    description = f"deployment run {state.run_id}"
    if plan is None:
        register_and_report(state.run_dir, connection, description=description)
        return
    register_and_report(
        state.run_dir,
        connection,
        description=f"{description}, retrained from model version {plan.parent_version}",
        fleet_run_id=plan.fleet_run_id,
        parent_id=plan.parent_version,
    )


def _load_state(settings: Any, run_id: str) -> Any:
    from coordinator.run_state import RunState

    try:
        return RunState.load(settings.state_dir, run_id)
    except ValueError as exc:
        fail(str(exc))


def _print_rounds(state: Any) -> None:
    for row in state.rounds():
        acc = row.get("accuracy")
        acc_text = "n/a" if acc is None else f"{acc:.4f}"
        typer.echo(
            f"round {row['round']}: accuracy={acc_text} sites={row['clients']}/{row['selected']}"
            f" refused={int(row.get('refused') or 0)} applied={row['applied']}"
            f" {row['duration_s']:.1f}s"
        )


@run_app.command("status")
def run_status(
    run_id: Annotated[str, typer.Argument(help="The run id printed by `run submit`.")],
    coordinator: CoordinatorOpt = Path("coordinator.toml"),
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
) -> None:
    """Show the run's rounds, who answered, refusals and what it waits for now; exits 1
    with the cause when the run failed."""
    from coordinator.superlink import load_sites

    settings = _settings(coordinator)
    state = _load_state(settings, run_id)
    names = {int(v["node-id"]): name for name, v in load_sites(settings).items()}
    status = state.status()
    failure = _failure(settings, state, ask_flower=True)
    doc = {
        "run-id": state.run_id,
        "finished": state.finished,
        "completed-rounds": state.completed_rounds,
        "num-rounds": state.num_rounds,
        "flower-runs": state.flower_runs,
        "status": status,
        "failure": failure,
        "refusals": state.refusals(),
        "rounds": state.rounds(),
    }
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
        if failure is not None:
            raise typer.Exit(code=EXIT_FAILURE)
        return

    def named(ids: list[int]) -> str:
        return ", ".join(names.get(int(i), str(i)) for i in ids) or "none"

    outcome = " finished" if state.finished else " failed" if failure is not None else ""
    typer.echo(f"run {state.run_id}: round {state.completed_rounds}/{state.num_rounds}{outcome}")
    _print_rounds(state)
    for refusal in doc["refusals"]:
        typer.echo(
            f"refused in round {refusal['round']} by {named([refusal['node-id']])}: "
            f"{refusal['reason']}"
        )
    if failure is not None:
        _run_failed(state, failure)
    if not state.finished and status:
        phase = status.get("phase")
        if phase == "waiting-for-sites":
            typer.echo(f"waiting for sites to connect; connected: {named(status['connected'])}")
        elif phase == "waiting-for-replies":
            typer.echo(
                f"round {status['round']}: waiting for {named(status['waiting_for'])} "
                f"until {status['deadline']} (updated {status['updated']})"
            )
        else:
            typer.echo(f"last: {phase} (updated {status.get('updated')})")


@run_app.command("resume")
def run_resume(
    run_id: Annotated[str, typer.Argument(help="The run to continue.")],
    coordinator: CoordinatorOpt = Path("coordinator.toml"),
    wait: Annotated[bool, typer.Option(help="Follow the run until it finishes.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds --wait waits at most.")] = 3600.0,
    register: RegisterOpt = False,
    fleet_url: FleetUrl = None,
) -> None:
    """Continue a run from its last completed round (after the coordinator died)."""
    from coordinator.superlink import CONNECTION, bin_dir, flwr_env

    settings = _settings(coordinator)
    state = _load_state(settings, run_id)
    if state.finished:
        fail(f"run {run_id} already finished all {state.num_rounds} rounds; nothing to resume")
    connection = _registry_connection(fleet_url) if register else None
    for flower_run in state.flower_runs:  # an earlier attempt must not run concurrently
        subprocess.run(
            [str(bin_dir() / "flwr"), "stop", str(flower_run), CONNECTION],
            env=flwr_env(settings),
            capture_output=True,
            timeout=120,
            check=False,
        )
    flower_run = _flwr_run(settings, state)
    typer.echo(
        f"run {run_id} resumes after round {state.completed_rounds} as Flower run {flower_run}",
        err=True,
    )
    typer.echo(state.run_id)
    if wait or register:
        _follow(settings, state, timeout)
    if connection is not None:
        _register(state, connection)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run_app())
