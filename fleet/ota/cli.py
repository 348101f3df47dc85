"""``fedfleet rollout ...`` and the OTA commands of ``fedfleet fleet``.

- ``fedfleet fleet broker-config --out DIR``: Mosquitto password, ACL and config files;
- ``fedfleet fleet mqtt``: the fleet's MQTT service (bridge + rollout controller, and with
  ``--broker-pid``/``--broker-pid-file`` the broker's credentials, fleet/ota/broker_sync.py);
- ``fedfleet rollout create|list|show|pause|resume|abort``: start, list, watch and steer
  staged rollouts over the fleet API (``--fleet-url``/``$FEDFLEET_URL``, token in
  ``$FEDFLEET_TOKEN``); the MQTT service picks them up from the fleet's database.

Operator commands (``rollout``) reach the fleet only through its API; the server-side
commands (``broker-config``, ``mqtt``) run next to the fleet and open its database.

(``fedfleet fleet simulate-devices`` is the simulator's: ``simulation/fleet_devices_cli.py``.)

Heavy imports stay inside the commands. Errors: one line on stderr, non-zero exit.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from fedfleet.cli_support import EXIT_FAILURE, DatabaseUrl, FleetUrl, fail, sub_app
from fedfleet.stopping import StopSignals, say_stopped
from fleet.cli import over_api as _over_api

RolloutIdArg = Annotated[int, typer.Argument(help="Rollout id (see `fedfleet rollout list`).")]

rollout_app = sub_app(help="Staged OTA rollouts.")
BrokerHost = Annotated[str, typer.Option("--broker-host", help="Broker address.")]
BrokerPort = Annotated[int, typer.Option("--broker-port", help="Broker port.")]


# How often the rollout controller looks for work: an idle pass is a few counting queries
# (fleet/ota/controller.py), so a new wave goes out within 0.1 s of being due.
CONTROLLER_TICK_S = 0.1


def engine_and_settings(database_url: str | None) -> Any:
    """The fleet database's engine (migrated) and the fleet's settings; one-line errors."""
    from fleet import cli as fleet_cli

    settings = fleet_cli.settings_from_env(database_url=database_url)
    return fleet_cli.migrated_engine(settings), settings


def _actor() -> Any:
    from fleet import cli as fleet_cli

    return fleet_cli.cli_actor()


# --- fedfleet fleet broker-config ------------------------------------------------------


def broker_config(
    out: Annotated[Path, typer.Option("--out", help="Folder to write the broker files to.")],
    port: Annotated[int, typer.Option(help="Plain MQTT listener port (127.0.0.1).")] = 1883,
    bind: Annotated[str, typer.Option(help="Address the listeners bind to.")] = "127.0.0.1",
    tls_cert: Annotated[
        Path | None, typer.Option(help="PEM certificate: adds a TLS listener.")
    ] = None,
    tls_key: Annotated[Path | None, typer.Option(help="PEM key of --tls-cert.")] = None,
    tls_port: Annotated[int, typer.Option(help="TLS listener port.")] = 8883,
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url",
            help="The fleet's database, sqlite:///PATH or postgresql://... (default: "
            "$FEDFLEET_FLEET_DATABASE_URL; there is no other default).",
            show_default=False,
        ),
    ] = None,
    broker: Annotated[
        str, typer.Option(help="mosquitto (embedded default) or nats (clusters, MQTT enabled).")
    ] = "mosquitto",
    client_port: Annotated[
        int, typer.Option(help="--broker nats: its own client port (127.0.0.1).")
    ] = 4222,
    replicas: Annotated[
        str,
        typer.Option(
            help="Mosquitto: NAME,NAME,... of `fleet mqtt --replica` processes; each gets "
            "its own broker user fedfleet-fleet-NAME and password file fleet-NAME.pass.",
        ),
    ] = "",
) -> None:
    """Write the broker's configuration (users, permissions) from the enrolled devices.

    Mosquitto: password file, ACL file and mosquitto.conf. NATS: nats.conf with the same
    permissions as subjects (docs/scale-out.md).

    A server-side command: it runs on the broker's host, next to `fedfleet fleet mqtt`, and
    reads the devices' password hashes from the fleet's database, which must be named
    (--database-url or $FEDFLEET_FLEET_DATABASE_URL) and must exist.
    """
    import os

    from fleet.ota.broker_config import (
        TlsListener,
        check_broker,
        check_replica_name,
        device_credentials_from_db,
        write_broker_config,
    )

    try:
        check_broker(broker)
    except ValueError as err:
        fail(str(err))
    replica_names = [name.strip() for name in replicas.split(",") if name.strip()]
    try:
        for name in replica_names:
            check_replica_name(name)
    except ValueError as err:
        fail(str(err))
    if broker == "nats" and replica_names:
        fail("--replicas is for Mosquitto: replicas are not built on NATS (docs/scale-out.md)")
    if broker == "nats" and tls_cert is not None:
        fail("--tls-cert is for Mosquitto; give NATS its TLS in nats.conf (mqtt { tls {...} })")
    if (tls_cert is None) != (tls_key is None):
        fail("give both --tls-cert and --tls-key for a TLS listener, or neither")
    database_url = database_url or os.environ.get("FEDFLEET_FLEET_DATABASE_URL", "").strip()
    if not database_url:
        fail(
            "broker-config reads the enrolled devices from the fleet's database: pass "
            "--database-url sqlite:///PATH or postgresql://... (or set "
            "$FEDFLEET_FLEET_DATABASE_URL), the one `fedfleet fleet serve` prints"
        )
    if database_url.startswith("sqlite:///"):
        db_file = Path(database_url.removeprefix("sqlite:///").split("?", 1)[0])
        if not db_file.is_file():
            fail(
                f"there is no fleet database at {db_file}; pass the --database-url "
                "`fedfleet fleet serve` prints"
            )
    engine, _settings = engine_and_settings(database_url)
    if broker == "nats":
        _nats_config(engine, out=out, port=port, client_port=client_port, bind=bind)
        return
    try:
        tls = TlsListener(tls_cert, tls_key, tls_port) if tls_cert and tls_key else None
        files = write_broker_config(
            out=out,
            devices=device_credentials_from_db(engine),
            port=port,
            bind=bind,
            tls=tls,
            replicas=replica_names,
        )
    except (ValueError, OSError) as err:
        fail(str(err))
    finally:
        engine.dispose()
    typer.echo(
        f"wrote {files.passwd}, {files.acl} and {files.conf} for {files.devices} devices; "
        f"run: mosquitto -c {files.conf}, then `fedfleet fleet mqtt --password-file "
        f"{files.fleet_password_file} --broker-pid PID` keeps the devices' credentials in step"
    )


def _nats_config(engine: Any, *, out: Path, port: int, client_port: int, bind: str) -> None:
    from fleet.ota.broker_config import device_credentials_from_db
    from fleet.ota.broker_nats import write_nats_config

    try:
        conf, kept, left_out = write_nats_config(
            out=out,
            devices=device_credentials_from_db(engine),
            port=port,
            client_port=client_port,
            bind=bind,
        )
    except (ValueError, OSError) as err:
        fail(str(err))
    finally:
        engine.dispose()
    typer.echo(f"wrote {conf} for {kept} devices; run: nats-server -c {conf}")
    if left_out:
        typer.echo(
            f"{left_out} devices are left out: NATS cannot check the PBKDF2 ($7$) hash the "
            "fleet keeps of their broker passwords; they log in once re-keyed with a "
            "password NATS can check (docs/scale-out.md)"
        )


# --- fedfleet fleet mqtt ---------------------------------------------------------------


def mqtt_service(
    broker_host: BrokerHost = "127.0.0.1",
    broker_port: BrokerPort = 1883,
    password_file: Annotated[
        Path, typer.Option(help="The fleet's broker password (from broker-config).")
    ] = Path("broker/fleet.pass"),
    ca_file: Annotated[Path | None, typer.Option(help="CA certificate: connect with TLS.")] = None,
    drift_every_s: Annotated[float, typer.Option(help="Seconds between drift checks.")] = 60.0,
    release_after_s: Annotated[
        float | None,
        typer.Option(
            help="Seconds a device of a sent wave may stay silent before it is released from "
            "the wave (default: $FEDFLEET_FLEET_ROLLOUT_RELEASE_AFTER_S, else twice the "
            "heartbeat timeout, offline-after-s).",
            show_default=False,
        ),
    ] = None,
    broker_pid: Annotated[
        int | None,
        typer.Option(
            help="PID of the Mosquitto that reads broker-config's files: keep its passwd "
            "in step with enrolled/retired devices and reload it (SIGHUP).",
            show_default=False,
        ),
    ] = None,
    broker_pid_file: Annotated[
        Path | None,
        typer.Option(
            help="The same as --broker-pid, read from a PID file at each reload "
            "(Debian's service: /run/mosquitto/mosquitto.pid).",
            show_default=False,
        ),
    ] = None,
    credentials_every_s: Annotated[
        float, typer.Option(help="Seconds between checks of the devices' broker credentials.")
    ] = 1.0,
    command_key: Annotated[
        Path | None,
        typer.Option(
            help="Ed25519 private key (PEM, from `fedfleet image keygen`) that signs every "
            "command; devices verify it with their public_key and refuse unsigned rollbacks.",
            show_default=False,
        ),
    ] = None,
    protocol_v1_until: Annotated[
        str | None,
        typer.Option(
            help="End of the device protocol v1 migration window (UTC, e.g. 2027-03-31): "
            "v1 devices are served until then, refused after (default: "
            "$FEDFLEET_FLEET_PROTOCOL_V1_UNTIL, else refused).",
            show_default=False,
        ),
    ] = None,
    replica: Annotated[
        str | None,
        typer.Option(
            help="Run as one of several `fleet mqtt` processes on one PostgreSQL database, "
            "named NAME (its own, stable across restarts: the broker keeps its session): "
            "device messages are shared among the replicas ($share/fedfleet/...), each "
            "stored once; the rollout controller and drift checks run in the leader only. "
            "It logs in as broker user fedfleet-fleet-NAME with --password-file "
            "DIR/fleet-NAME.pass (`fleet broker-config --replicas NAME,...` writes both).",
            show_default=False,
        ),
    ] = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Run the fleet's MQTT service: ingest device messages, serve chunks, drive rollouts,
    and (with --broker-pid/--broker-pid-file) keep the broker's credentials in step.

    On PostgreSQL only the leader (a session advisory lock, fleet/ota/leader.py) runs the
    rollout controller and the drift checks; another process takes over when it dies."""
    # Flags first: nothing is created or connected for a command line that is refused.
    if not password_file.is_file():
        fail(f"{password_file} not found; run `fedfleet fleet broker-config --out DIR` first")
    if broker_pid is not None and broker_pid_file is not None:
        fail("give --broker-pid or --broker-pid-file, not both")
    if release_after_s is not None and release_after_s <= 0:
        fail(f"--release-after-s must be positive, got {release_after_s}")
    signing = _command_key(command_key)
    v1_until = _v1_until(protocol_v1_until)
    _check_replica(replica, database_url, password_file)
    with StopSignals() as stop:  # a signal while starting stops it too, no traceback
        engine, settings = engine_and_settings(database_url)
        if v1_until is not None:
            settings = settings.with_changes(protocol_v1_until=v1_until)
        try:
            _serve_mqtt(
                stop,
                engine,
                settings,
                password_file=password_file,
                broker=(broker_host, broker_port, ca_file),
                sync=_credential_sync(
                    engine,
                    password_file=password_file,
                    pid=broker_pid,
                    pid_file=broker_pid_file,
                    every_s=credentials_every_s,
                    replica=replica,
                ),
                release_after_s=release_after_s,
                drift_every_s=drift_every_s,
                command_key=signing,
                replica=replica,
            )
        finally:
            engine.dispose()
    say_stopped("fleet mqtt", stop.signum)


def _serve_mqtt(
    stop: StopSignals,
    engine: Any,
    settings: Any,
    *,
    password_file: Path,
    broker: tuple[str, int, Path | None],
    sync: _SyncLoop | None,
    release_after_s: float | None,
    drift_every_s: float,
    command_key: Any = None,
    replica: str | None = None,
) -> None:
    """The service loop, until ``stop``; the bridge's pending messages are written before
    it returns (``FleetBridge.stop``). Rollouts, reference pushes and drift checks run
    only while this process leads (:mod:`fleet.ota.leader`); ingestion always."""
    from fleet.artifacts import ArtifactStore
    from fleet.ota.bridge import BridgeSettings, FleetBridge
    from fleet.ota.broker_config import FLEET_USER, replica_user
    from fleet.ota.controller import RolloutController
    from fleet.ota.leader import Leadership
    from fleet.ota.reference_push import push_references
    from fleet.ota.telemetry import check_all

    host, port, ca_file = broker
    bridge = FleetBridge(
        engine=engine,
        store=ArtifactStore(settings.artifact_dir),
        settings=BridgeSettings(
            host=host,
            port=port,
            username=FLEET_USER if replica is None else replica_user(replica),
            password=password_file.read_text().strip(),
            ca_file=ca_file,
            command_key=command_key,
            v1_until=(
                settings.protocol_v1_until.timestamp()
                if settings.protocol_v1_until is not None
                else None
            ),
            **_replica_settings(replica),
        ),
    )
    release = settings.release_after_s if release_after_s is None else release_after_s
    try:
        bridge.start()
    except ConnectionError as err:
        fail(str(err), EXIT_FAILURE)
    leadership = Leadership(engine, schema=settings.database_schema)
    try:
        controller = RolloutController(engine=engine, sender=bridge, release_after_s=release)
        typer.echo(f"fleet MQTT service connected to {host}:{port}")
        typer.echo(_v1_line(settings.protocol_v1_until))
        next_drift = time.monotonic() + drift_every_s
        reported: set[str] = set()  # bad stored drift rows, each reported once
        rule = settings.drift_rule()
        leading: bool | None = None  # said at start, then at each change
        while not stop.wait(CONTROLLER_TICK_S):
            try:  # no stored row or device message ends the service: log, carry on
                if sync is not None:
                    sync.step()
                if leadership.check() != leading:
                    leading = leadership.is_leader
                    typer.echo(
                        f"fleet mqtt: {'leader' if leading else 'standby'} (pid {os.getpid()})"
                    )
                if not leading:
                    continue  # a standby ingests only
                controller.step()
                push_references(engine, bridge)
                if time.monotonic() >= next_drift:
                    next_drift = time.monotonic() + drift_every_s
                    for event in check_all(engine, rule=rule, reported=reported):
                        typer.echo(
                            f"drift event {event.id}: model {event.model_version_id} "
                            f"PSI {event.score:.2f}, {event.agreeing} of "
                            f"{event.population} devices agreed"
                        )
            except Exception:
                logging.getLogger("fleet.ota").exception("fleet mqtt: a pass failed; carrying on")
    finally:
        leadership.close()
        bridge.stop()


def _check_replica(replica: str | None, database_url: str | None, password_file: Path) -> None:
    """``--replica`` needs PostgreSQL, a name fit for a client id and its own broker
    password (``fleet-NAME.pass``); exit 2 if not."""
    if replica is None:
        return
    from fleet.ota.broker_config import check_replica_name, replica_password_file

    try:
        check_replica_name(replica)
    except ValueError:
        fail(f"--replica {replica!r}: use 1-40 letters, digits, '-' or '_' (e.g. --replica a)")
    from fleet import cli as fleet_cli

    url = fleet_cli.settings_from_env(database_url=database_url).database_url
    if url.startswith("sqlite"):
        fail(
            "--replica needs PostgreSQL: SQLite is the single-process embedded default "
            "(run one `fleet mqtt` without --replica, or use --database-url postgresql://...)"
        )
    own = replica_password_file(password_file.parent, replica)
    if password_file.name != own.name:
        fail(
            f"--replica {replica} logs in as its own broker user: pass --password-file "
            f"{own} (write it with `fedfleet fleet broker-config --replicas {replica},...`)"
        )


def _replica_settings(replica: str | None) -> dict[str, Any]:
    """The bridge settings of a replica: its own persistent session in the shared group."""
    if replica is None:
        return {}
    return {
        "client_id": f"fedfleet-fleet-{replica}",
        "shared_group": "fedfleet",
        "batch_wait_s": 0.02,  # acknowledged after the write: keep batches short
    }


def _v1_until(raw: str | None) -> Any:
    """``--protocol-v1-until`` parsed (None when not given); exit 2 with one line if bad."""
    if raw is None:
        return None
    from fleet.settings import parse_utc

    try:
        return parse_utc(raw)
    except ValueError as err:
        fail(f"--protocol-v1-until {raw!r}: {err}")


def _v1_line(until: Any) -> str:
    """What the service says at start about device protocol v1 (docs/device-protocol.md)."""
    from datetime import UTC, datetime

    if until is None:
        return (
            "device protocol v2 only: v1 devices are refused (--protocol-v1-until opens a window)"
        )
    if until <= datetime.now(UTC):
        return f"device protocol v2 only: the v1 migration window ended {until.isoformat()}"
    return f"device protocol v1 devices served until {until.isoformat()} (then refused)"


def _command_key(path: Path | None) -> Any:
    """``--command-key`` loaded (None when not given); exit 2 with one line if unusable."""
    if path is None:
        return None
    from firmware_images.errors import KeyFileError
    from firmware_images.keys import load_private_key

    try:
        return load_private_key(path)
    except KeyFileError as err:
        fail(f"--command-key: {err}")


class _SyncLoop:
    """Runs a CredentialSync in the service loop; reports each failure once, on stderr."""

    def __init__(self, sync: Any) -> None:
        self._sync = sync
        self._last_error = ""

    def step(self) -> None:
        from sqlalchemy.exc import SQLAlchemyError

        from fleet.ota.broker_sync import BrokerSyncError

        try:
            applied = self._sync.step()
        except (BrokerSyncError, SQLAlchemyError) as err:
            message = f"error: broker credentials not reloaded (retrying): {err}"
            if message != self._last_error:
                typer.echo(message, err=True)
            self._last_error = message
            return
        if applied is not None:
            self._last_error = ""
            typer.echo(f"broker credentials reloaded: {applied.devices} devices")


def _credential_sync(
    engine: Any,
    *,
    password_file: Path,
    pid: int | None,
    pid_file: Path | None,
    every_s: float,
    replica: str | None = None,
) -> _SyncLoop | None:
    from fleet.ota.broker_sync import BrokerProcess, CredentialSync

    if pid is None and pid_file is None:
        typer.echo(
            "note: broker credentials are not kept in step (no --broker-pid-file); rerun "
            "broker-config and reload the broker after enrolling or retiring devices",
            err=True,
        )
        return None
    try:
        broker = BrokerProcess(pid=pid, pid_file=pid_file)
        return _SyncLoop(
            CredentialSync(
                engine=engine,
                folder=password_file.parent,
                # The fleet user's password (a replica's own file is its user's only).
                fleet_password=(
                    password_file if replica is None else password_file.with_name("fleet.pass")
                )
                .read_text()
                .strip(),
                reload=broker.reload,
                every_s=every_s,
            )
        )
    except (ValueError, OSError) as err:
        engine.dispose()
        fail(str(err))


# --- fedfleet rollout ------------------------------------------------------------------


@rollout_app.command("create")
def rollout_create(
    model: Annotated[int, typer.Option("--model", help="Model version id to roll out.")],
    group: Annotated[str, typer.Option("--group", help="Group of devices.")],
    waves: Annotated[
        str, typer.Option(help="Cumulative percentages per wave, e.g. 5,25,100.")
    ] = "5,25,100",
    max_failure_rate: Annotated[
        float, typer.Option(help="Failed fraction of a wave that aborts (0..1).")
    ] = 0.1,
    ack_timeout_s: Annotated[float, typer.Option(help="Seconds a device has to answer.")] = 600.0,
    max_accuracy_drop_points: Annotated[
        float | None,
        typer.Option(help="Abort when the canary is this many accuracy points below (0..100)."),
    ] = None,
    max_latency_ratio: Annotated[
        float | None,
        typer.Option(help="Abort when the canary's p95 latency is over this multiple (>= 1)."),
    ] = None,
    max_error_rate: Annotated[
        float | None, typer.Option(help="Abort above this inference error rate (0..1).")
    ] = None,
    max_prediction_shift: Annotated[
        float | None,
        typer.Option(help="Abort above this predicted-class distribution shift (0..1, TV)."),
    ] = None,
    soak_s: Annotated[
        float, typer.Option(help="Seconds to watch each wave after it installed.")
    ] = 0.0,
    min_quality_devices: Annotated[
        int, typer.Option(help="Devices with data each side needs for a quality verdict.")
    ] = 2,
    min_quality_samples: Annotated[
        int, typer.Option(help="Samples each side needs for a quality verdict.")
    ] = 200,
    fleet_url: FleetUrl = None,
) -> None:
    """Create a staged rollout over the fleet API; the fleet's MQTT service carries it out.
    With quality thresholds, each wave is compared with the devices still on the previous
    version and aborted (and rolled back) on a regression (docs/mqtt.md)."""
    from pydantic import ValidationError

    from fleet.models.ota import RolloutCreate

    try:
        percents = [int(w) for w in waves.split(",") if w.strip()]
        data = RolloutCreate(
            model_version_id=model,
            group=group,
            waves=percents,
            max_failure_rate=max_failure_rate,
            ack_timeout_s=ack_timeout_s,
            max_accuracy_drop_points=max_accuracy_drop_points,
            max_latency_ratio=max_latency_ratio,
            max_error_rate=max_error_rate,
            max_prediction_shift=max_prediction_shift,
            soak_s=soak_s,
            min_quality_devices=min_quality_devices,
            min_quality_samples=min_quality_samples,
        )
    except ValueError as err:
        if isinstance(err, ValidationError):
            first = err.errors()[0]
            field = ".".join(str(p) for p in first["loc"]).replace("_", "-")
            fail(f"--{field}: {first['msg'].removeprefix('Value error, ')}")
        fail(f"--waves must be comma-separated integers like 5,25,100 ({err})")
    view = _over_api(
        fleet_url,
        lambda c: c.create_rollout(
            model_version_id=data.model_version_id,
            group=data.group,
            waves=data.waves,
            max_failure_rate=data.max_failure_rate,
            ack_timeout_s=data.ack_timeout_s,
            max_accuracy_drop_points=data.max_accuracy_drop_points,
            max_latency_ratio=data.max_latency_ratio,
            max_error_rate=data.max_error_rate,
            max_prediction_shift=data.max_prediction_shift,
            soak_s=data.soak_s,
            min_quality_devices=data.min_quality_devices,
            min_quality_samples=data.min_quality_samples,
        ),
    )
    sizes = ", ".join(str(w.devices) for w in view.progress)
    typer.echo(
        f"rollout {view.id}: model {view.model_version_id} to group '{view.group}' in "
        f"{len(view.progress)} waves ({sizes} devices); abort above "
        f"{view.max_failure_rate:.0%} failures{_quality_terms(data)}"
    )


def _quality_terms(data: Any) -> str:
    """The canary's quality thresholds, as the create command echoes them."""
    terms = [
        f"{label} {value:g}"
        for label, value in (
            ("accuracy drop > points", data.max_accuracy_drop_points),
            ("p95 latency ratio >", data.max_latency_ratio),
            ("error rate >", data.max_error_rate),
            ("prediction shift >", data.max_prediction_shift),
        )
        if value is not None
    ]
    if not terms and not data.soak_s:
        return ""
    quality = ", ".join(terms) or "none"
    return f", or on quality ({quality}; soak {data.soak_s:g} s per wave)"


@rollout_app.command("list")
def rollout_list(fleet_url: FleetUrl = None) -> None:
    """List rollouts, newest first, with their progress (the fleet API's first page)."""
    page = _over_api(fleet_url, lambda c: c.list_rollouts())
    for view in page.items:
        done = sum(w.installed for w in view.progress)
        total = sum(w.devices for w in view.progress)
        typer.echo(
            f"{view.id}\tmodel {view.model_version_id}\t{view.group}\t{view.status}\t"
            f"wave {view.current_wave + 1}/{len(view.progress)}\t{done}/{total} installed"
            + (f"\t{view.reason}" if view.reason else "")
        )
    if page.total > len(page.items):
        typer.echo(
            f"({page.total - len(page.items)} older rollouts not shown; "
            "GET /api/v1/rollouts?offset=N pages through them)",
            err=True,
        )


def _print_rollout(view: Any) -> None:
    typer.echo(
        f"rollout {view.id}: model {view.model_version_id} to group '{view.group}', "
        f"{view.status}, wave {view.current_wave + 1}/{view.waves}, "
        f"waiting for {view.waiting} device{'' if view.waiting == 1 else 's'}"
        + (f" ({view.reason})" if view.reason else "")
    )


@rollout_app.command("show")
def rollout_show(rollout_id: RolloutIdArg, fleet_url: FleetUrl = None) -> None:
    """One rollout: each wave's devices and their states, and who it is waiting for."""
    view = _over_api(fleet_url, lambda c: c.get_rollout(rollout_id))
    _print_rollout(view)
    typer.echo("wave	device	name	state	attempts	error")
    for d in view.devices:
        typer.echo(
            f"{d.wave + 1}	{d.device_id}	{d.device_name}	{d.phase}	{d.attempts}	{d.error}"
        )
    waiting = [d.device_id for d in view.devices if d.phase == "waiting"]
    typer.echo("waiting for: " + (", ".join(waiting) if waiting else "nobody"))


@rollout_app.command("pause")
def rollout_pause(rollout_id: RolloutIdArg, fleet_url: FleetUrl = None) -> None:
    """Pause a running rollout: no new wave and no resend (answers still count)."""
    _print_rollout(_over_api(fleet_url, lambda c: c.pause_rollout(rollout_id)))


@rollout_app.command("resume")
def rollout_resume(rollout_id: RolloutIdArg, fleet_url: FleetUrl = None) -> None:
    """Resume a paused rollout where it stopped."""
    _print_rollout(_over_api(fleet_url, lambda c: c.resume_rollout(rollout_id)))


@rollout_app.command("abort")
def rollout_abort(
    rollout_id: RolloutIdArg,
    rollback: Annotated[
        bool,
        typer.Option(
            "--rollback/--no-rollback",
            help="Send the current wave's devices that installed the new model back to their "
            "previous one (--rollback), or leave them on it (--no-rollback).",
        ),
    ] = True,
    fleet_url: FleetUrl = None,
) -> None:
    """Abort a running or paused rollout for good."""
    _print_rollout(_over_api(fleet_url, lambda c: c.abort_rollout(rollout_id, rollback=rollback)))


# The OTA commands of ``fedfleet fleet``: the root CLI (fedfleet/cli.py) mounts them there,
# as the admin CLI (fleet/cli.py) never imports the OTA side.
fleet_commands = sub_app()
fleet_commands.command("broker-config")(broker_config)
fleet_commands.command("mqtt")(mqtt_service)
