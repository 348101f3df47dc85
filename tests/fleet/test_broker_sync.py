"""CredentialSync (fleet/ota/broker_sync.py): the broker's password file follows the device
table and the broker is reloaded once per change; a PID that is not Mosquitto is never
signalled. The end-to-end proof with real processes is tests/e2e/test_broker_credentials.py."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine
from typer.testing import CliRunner

from fleet.audit import Actor
from fleet.credentials import verify_mosquitto_hash
from fleet.crud import devices as crud
from fleet.db import session_scope
from fleet.models.devices import Device, DeviceCreate
from fleet.ota.broker_config import FLEET_USER, write_broker_config
from fleet.ota.broker_sync import (
    BrokerProcess,
    BrokerSyncError,
    CredentialSync,
    credentials_digest,
)

ACTOR = Actor(name="cli:tests", role="admin", source="cli")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _enroll(engine: Engine, name: str) -> tuple[str, str]:
    with session_scope(engine, write=True) as session:
        device, password = crud.enroll_device(
            session,
            DeviceCreate(name=name, hardware_target="rpi5"),
            actor=ACTOR,
            offline_after_s=60,
        )
        return device.id, password


def _passwd(folder: Path) -> dict[str, str]:
    lines = (folder / "passwd").read_text().splitlines()
    return dict(line.split(":", 1) for line in lines)


@pytest.fixture
def engine(database: object) -> Iterator[Engine]:
    made = database.engine()  # type: ignore[attr-defined]
    yield made
    made.dispose()


def _sync(engine: Engine, folder: Path, reloads: list[int], clock: Clock) -> CredentialSync:
    files = write_broker_config(out=folder, devices=[])
    return CredentialSync(
        engine=engine,
        folder=folder,
        fleet_password=files.fleet_password_file.read_text().strip(),
        reload=lambda: reloads.append(1),
        every_s=1.0,
        clock=clock,
    )


def test_enrol_rotate_and_retire_each_reach_the_passwd_file_with_one_reload(
    engine: Engine, tmp_path: Path
) -> None:
    # Prepare: a broker folder written before any device existed.
    reloads: list[int] = []
    clock = Clock()
    sync = _sync(engine, tmp_path / "broker", reloads, clock)
    fleet_password = (tmp_path / "broker" / "fleet.pass").read_text().strip()

    # Execute + Assert: the first check always reloads (the broker may be stale).
    assert sync.step() is not None and len(reloads) == 1
    clock.now = 1.0
    assert sync.step() is None and len(reloads) == 1  # nothing changed

    device_id, password = _enroll(engine, "pi-1")
    clock.now = 1.5
    assert sync.step() is None  # not due yet
    clock.now = 2.0
    applied = sync.step()
    assert applied is not None and applied.devices == 1 and len(reloads) == 2
    entries = _passwd(tmp_path / "broker")
    assert verify_mosquitto_hash(password, entries[device_id])
    assert verify_mosquitto_hash(fleet_password, entries[FLEET_USER])
    # The ACL names no device (patterns only): the same file at any fleet size.
    assert device_id not in (tmp_path / "broker" / "acl").read_text()

    with session_scope(engine, write=True) as session:
        device = session.get(Device, device_id)
        assert device is not None
        new_password = crud.rotate_credentials(session, device, actor=ACTOR)
    clock.now = 3.0
    assert sync.step() is not None and len(reloads) == 3
    assert verify_mosquitto_hash(new_password, _passwd(tmp_path / "broker")[device_id])
    assert not verify_mosquitto_hash(password, _passwd(tmp_path / "broker")[device_id])

    with session_scope(engine, write=True) as session:
        device = session.get(Device, device_id)
        assert device is not None
        crud.retire_device(session, device, actor=ACTOR, offline_after_s=60)
    clock.now = 4.0
    assert sync.step() is not None and len(reloads) == 4
    assert set(_passwd(tmp_path / "broker")) == {FLEET_USER}
    assert f"user {device_id}" not in (tmp_path / "broker" / "acl").read_text()


def test_a_failed_reload_is_retried_at_the_next_check(engine: Engine, tmp_path: Path) -> None:
    # Prepare: a broker that cannot be signalled the first time.
    attempts: list[int] = []

    def reload() -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise BrokerSyncError("no process 4242: is the broker running?")

    clock = Clock()
    files = write_broker_config(out=tmp_path / "b", devices=[])
    sync = CredentialSync(
        engine=engine,
        folder=tmp_path / "b",
        fleet_password=files.fleet_password_file.read_text().strip(),
        reload=reload,
        clock=clock,
    )
    # Execute + Assert
    with pytest.raises(BrokerSyncError, match="4242"):
        sync.step()
    clock.now = 1.0
    assert sync.step() is not None and len(attempts) == 2


def test_digest_ignores_order_and_sees_a_changed_hash() -> None:
    rows = [("dev-a", "$7$1$x$y"), ("dev-b", "$7$1$x$z")]
    assert credentials_digest(rows) == credentials_digest(list(reversed(rows)))
    assert credentials_digest(rows) != credentials_digest([rows[0], ("dev-b", "$7$1$x$w")])


def test_a_folder_without_passwd_is_refused_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="broker-config --out"):
        CredentialSync(engine=None, folder=tmp_path, fleet_password="x", reload=lambda: None)


def test_a_process_that_is_not_mosquitto_is_never_signalled(tmp_path: Path) -> None:
    # Prepare: a live process that would die of SIGHUP.
    other = subprocess.Popen(["sleep", "30"])
    try:
        # Execute + Assert: refused by name, by PID and through a PID file.
        with pytest.raises(BrokerSyncError, match="not mosquitto"):
            BrokerProcess(pid=other.pid).reload()
        pid_file = tmp_path / "mosquitto.pid"
        pid_file.write_text(f"{other.pid}\n")
        with pytest.raises(BrokerSyncError, match="not mosquitto"):
            BrokerProcess(pid_file=pid_file).reload()
        assert other.poll() is None  # still alive: no signal was sent
    finally:
        other.kill()
        other.wait()
    pid_file.write_text("garbage")
    with pytest.raises(BrokerSyncError, match="not a PID"):
        BrokerProcess(pid_file=pid_file).reload()
    with pytest.raises(BrokerSyncError, match="cannot read"):
        BrokerProcess(pid_file=tmp_path / "missing.pid").reload()
    with pytest.raises(ValueError, match="exactly one"):
        BrokerProcess()


def test_cli_refuses_both_pid_options(tmp_path: Path) -> None:
    from fleet.ota.cli import fleet_commands

    (tmp_path / "fleet.pass").write_text("pw\n")
    result = CliRunner().invoke(
        fleet_commands,
        [
            "mqtt",
            "--password-file",
            str(tmp_path / "fleet.pass"),
            "--broker-pid",
            "1234",
            "--broker-pid-file",
            str(tmp_path / "m.pid"),
            "--database-url",
            f"sqlite:///{tmp_path / 'fleet.db'}",
        ],
    )
    assert result.exit_code == 2
    assert "--broker-pid or --broker-pid-file, not both" in result.output


def test_the_service_reports_a_failing_reload_once_and_then_the_recovery(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from fleet.ota.broker_sync import SyncResult
    from fleet.ota.cli import _SyncLoop

    # Prepare: a sync that fails twice the same way, then succeeds.
    outcomes: list[object] = [
        BrokerSyncError("no process 4242: is the broker running?"),
        BrokerSyncError("no process 4242: is the broker running?"),
        SyncResult(devices=3),
        None,
    ]

    class FakeSync:
        def step(self) -> SyncResult | None:
            outcome = outcomes.pop(0)
            if isinstance(outcome, Exception):
                raise outcome
            return outcome  # type: ignore[return-value]

    loop = _SyncLoop(FakeSync())
    # Execute
    for _ in range(4):
        loop.step()
    # Assert: one error line for two failures, then the reload, and the loop kept running.
    captured = capsys.readouterr()
    assert captured.err.count("no process 4242") == 1
    assert "broker credentials reloaded: 3 devices" in captured.out
