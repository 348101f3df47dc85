"""Broker files from the fleet: the real Mosquitto accepts them and enforces the ACL."""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import ssl
import stat
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID
from typer.testing import CliRunner

# The test broker (tests/e2e/broker_process.py) lives with the end-to-end helpers.
sys.path.insert(0, str(Path(__file__).parents[1] / "e2e"))

from broker_process import MosquittoProcess, NatsProcess, free_port

from edge_client.device_agent import DeviceAgent
from edge_client.device_config import BrokerSettings, DeviceConfig
from edge_client.protocol import mqtt as proto
from fleet.credentials import mosquitto_hash
from fleet.ota.broker_config import (
    FLEET_USER,
    acl_text,
    passwd_text,
    write_broker_config,
    write_credentials,
)
from fleet.ota.broker_nats import write_nats_config

PASSWORDS = {"dev-aaaa": "pw-a-" + uuid.uuid4().hex, "dev-bbbb": "pw-b-" + uuid.uuid4().hex}


class Listener:
    """An MQTT client that records (topic, payload) of what it receives."""

    def __init__(
        self, port: int, user: str, password: str, topics: list[str], **tls: object
    ) -> None:
        self.got: list[tuple[str, bytes]] = []
        self.subscribed = threading.Event()
        self.connected: list[bool] = []
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"{user}-{uuid.uuid4().hex[:4]}"
        )
        self.client.username_pw_set(user, password)
        if tls:
            self.client.tls_set(**tls)  # type: ignore[arg-type]
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = lambda _c, _u, m: self.got.append((m.topic, bytes(m.payload)))
        self.topics = topics
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_connect(
        self, client: mqtt.Client, _u: object, _f: object, reason: object, _p: object
    ) -> None:
        self.connected.append(not reason.is_failure)  # type: ignore[attr-defined]
        if self.topics and not reason.is_failure:  # type: ignore[attr-defined]
            client.subscribe([(t, 1) for t in self.topics])

    def close(self) -> None:
        self.client.disconnect()  # before loop_stop(): no wait for the loop's 1 s select
        self.client.loop_stop()


@pytest.fixture(params=["mosquitto", "nats"])
def broker(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[MosquittoProcess, str]]:
    """The generated config on Mosquitto, and on NATS (the clustered broker): the same
    permissions hold on both."""
    if request.param == "nats":
        port = free_port()
        conf, _, _ = write_nats_config(
            out=tmp_path / "nats",
            devices=list(PASSWORDS.items()),
            port=port,
            client_port=free_port(),
        )
        nats = NatsProcess(config=conf, port=port)
        try:
            yield nats.start(), (tmp_path / "nats" / "fleet.pass").read_text().strip()
        finally:
            nats.close()
        return
    files = write_broker_config(
        out=tmp_path / "broker",
        devices=[(user, mosquitto_hash(pw)) for user, pw in PASSWORDS.items()],
    )
    process = MosquittoProcess(passwd=files.passwd, acl=files.acl)
    try:
        yield process.start(), files.fleet_password_file.read_text().strip()
    finally:
        process.close()


def _wait(predicate: object, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def test_a_device_cannot_publish_or_read_as_another_device(
    broker: tuple[MosquittoProcess, str],
) -> None:
    # Prepare: the fleet listens to every status; device b listens to its commands.
    process, fleet_password = broker
    fleet = Listener(process.port, FLEET_USER, fleet_password, [proto.uplink_filter("status")])
    dev_b = Listener(
        process.port, "dev-bbbb", PASSWORDS["dev-bbbb"], [proto.topic("dev-bbbb", "cmd")]
    )
    dev_a = Listener(
        process.port,
        "dev-aaaa",
        PASSWORDS["dev-aaaa"],
        [proto.topic("dev-bbbb", "cmd"), proto.topic("dev-aaaa", "cmd")],
    )
    try:
        assert _wait(
            lambda: (
                fleet.subscribed.is_set()
                and dev_a.subscribed.is_set()
                and dev_b.subscribed.is_set()
            )
        )
        # Execute: a speaks as b, then as itself; the fleet commands b and a.
        dev_a.client.publish(proto.topic("dev-bbbb", "status"), b"forged", qos=1).wait_for_publish(
            5
        )
        dev_a.client.publish(proto.topic("dev-aaaa", "status"), b"own", qos=1).wait_for_publish(5)
        dev_a.client.publish(proto.topic("dev-bbbb", "cmd"), b"forged-cmd", qos=1).wait_for_publish(
            5
        )
        fleet.client.publish(proto.topic("dev-bbbb", "cmd"), b"for-b", qos=1).wait_for_publish(5)
        fleet.client.publish(proto.topic("dev-aaaa", "cmd"), b"for-a", qos=1).wait_for_publish(5)
        assert _wait(lambda: len(fleet.got) >= 1 and len(dev_a.got) >= 1 and len(dev_b.got) >= 1)
        time.sleep(0.5)  # anything forged would have arrived by now
    finally:
        for client in (fleet, dev_a, dev_b):
            client.close()

    # Assert: only a's own status reached the fleet; a never saw b's command; b got only the fleet's.
    assert fleet.got == [(proto.topic("dev-aaaa", "status"), b"own")]
    assert dev_a.got == [(proto.topic("dev-aaaa", "cmd"), b"for-a")]
    assert dev_b.got == [(proto.topic("dev-bbbb", "cmd"), b"for-b")]


def test_devices_read_the_shared_artifact_topic_but_cannot_publish_on_it(
    broker: tuple[MosquittoProcess, str],
) -> None:
    # Prepare: device b listens on an artifact topic; device a tries to feed it chunks.
    process, fleet_password = broker
    shared = proto.artifact_topic("cd" * 32)
    fleet = Listener(process.port, FLEET_USER, fleet_password, [])
    dev_a = Listener(process.port, "dev-aaaa", PASSWORDS["dev-aaaa"], [])
    dev_b = Listener(process.port, "dev-bbbb", PASSWORDS["dev-bbbb"], [shared])
    try:
        assert _wait(lambda: dev_b.subscribed.is_set() and fleet.connected and dev_a.connected)
        # Execute
        dev_a.client.publish(shared, b"forged-chunk", qos=1).wait_for_publish(5)
        fleet.client.publish(shared, b"fleet-chunk", qos=1).wait_for_publish(5)
        assert _wait(lambda: len(dev_b.got) >= 1)
        time.sleep(0.5)  # a forged chunk would have arrived by now
    finally:
        for client in (fleet, dev_a, dev_b):
            client.close()

    # Assert: only the fleet's publication reached the device.
    assert dev_b.got == [(shared, b"fleet-chunk")]
    assert f"pattern read {proto.ARTIFACT_FILTER}" in acl_text()


def test_acl_names_no_device_and_replicas_keep_their_own_users(tmp_path: Path) -> None:
    # Prepare: 3 devices and two replicas.
    devices = [(f"dev-{i:04d}", mosquitto_hash("pw")) for i in range(3)]
    files = write_broker_config(out=tmp_path / "b", devices=devices, replicas=["a", "b"])
    own = {name: (tmp_path / "b" / f"fleet-{name}.pass").read_text() for name in "ab"}

    # Execute: a credential sync rewrites acl/passwd (fleet mqtt --broker-pid-file).
    write_credentials(out=tmp_path / "b", devices=devices[:2], fleet_password="pw-fleet")

    # Assert: the ACL is the same size at any fleet size and names no device; the replica
    # users survive the sync with their own (private, kept) passwords.
    acl = files.acl.read_text()
    assert "dev-" not in acl and acl == acl_text(replicas=["a", "b"])
    assert f"user {FLEET_USER}-a\ntopic readwrite fedfleet/v1/#" in acl
    users = [line.split(":")[0] for line in files.passwd.read_text().splitlines()]
    assert users == ["dev-0000", "dev-0001", FLEET_USER, f"{FLEET_USER}-a", f"{FLEET_USER}-b"]
    for name in "ab":
        path = tmp_path / "b" / f"fleet-{name}.pass"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_text() == own[name]
    assert own["a"] != own["b"]
    with pytest.raises(ValueError, match="replica name"):
        write_broker_config(out=tmp_path / "c", devices=[], replicas=["a/b"])
    assert not (tmp_path / "c").exists()


def test_wrong_password_and_unknown_users_are_refused(broker: tuple[MosquittoProcess, str]) -> None:
    process, _ = broker
    wrong = Listener(process.port, "dev-aaaa", "not-the-password", [])
    stranger = Listener(process.port, "dev-zzzz", "whatever", [])
    try:
        assert _wait(lambda: wrong.connected and stranger.connected)
    finally:
        wrong.close()
        stranger.close()
    assert wrong.connected[0] is False and stranger.connected[0] is False


def test_files_hold_hashes_only_and_a_private_fleet_password(tmp_path: Path) -> None:
    files = write_broker_config(
        out=tmp_path / "b", devices=[("dev-aaaa", mosquitto_hash("secret-pw"))]
    )
    text = files.passwd.read_text()
    assert "secret-pw" not in text and text.startswith("dev-aaaa:$7$")
    assert stat.S_IMODE(files.fleet_password_file.stat().st_mode) == 0o600
    again = write_broker_config(out=tmp_path / "b", devices=[])
    assert again.fleet_password_file.read_text() == files.fleet_password_file.read_text()
    assert "pattern write fedfleet/v1/dev/%u/status" in acl_text()
    assert "pattern read fedfleet/v1/dev/%u/cmd" in acl_text()
    assert "allow_anonymous false" in files.conf.read_text()


def test_bad_inputs_are_refused_before_writing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="malformed"):
        passwd_text([("dev:evil", "$7$x")])
    with pytest.raises(ValueError, match="device id"):
        write_broker_config(out=tmp_path / "x", devices=[("a/b", "$7$1$a$b")])
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="not a folder"):
        write_broker_config(out=tmp_path / "file", devices=[])


def _self_signed(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "server.pem", folder / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    os.chmod(key_path, 0o644)  # test key: the mosquitto user must read it
    return cert_path, key_path


def test_tls_listener_accepts_a_device_with_the_ca(tmp_path: Path) -> None:
    # Prepare: broker files plus a TLS listener with a self-signed certificate.
    certs = Path(tempfile.mkdtemp(prefix="fedfleet-tls-"))
    os.chmod(certs, 0o755)
    try:
        cert, key = _self_signed(certs)
        files = write_broker_config(
            out=tmp_path / "b", devices=[("dev-aaaa", mosquitto_hash("pw"))]
        )
        tls_port = free_port()
        extra = f"listener {tls_port} 127.0.0.1\ncertfile {cert}\nkeyfile {key}"
        with MosquittoProcess(passwd=files.passwd, acl=files.acl, extra=extra):
            # Execute: a raw client and the real device agent, both over TLS.
            device = Listener(
                tls_port,
                "dev-aaaa",
                "pw",
                [proto.topic("dev-aaaa", "cmd")],
                ca_certs=str(cert),
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
            try:
                ok = _wait(lambda: bool(device.connected))
            finally:
                device.close()
            agent = _tls_agent(tmp_path, port=tls_port, ca=cert)
            agent.start()
            try:
                agent_ok = _wait(lambda: agent._connected)
            finally:
                agent.stop()
    finally:
        shutil.rmtree(certs, ignore_errors=True)
    # Assert
    assert ok and device.connected[0] is True
    assert agent_ok


def _tls_agent(tmp_path: Path, *, port: int, ca: Path | None, password: str = "pw") -> DeviceAgent:
    key = tmp_path / "fleet.pub"
    key.write_bytes(
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    config = DeviceConfig(
        device_id="dev-aaaa",
        target="cpu-x86",
        slots_dir=tmp_path / "slots",
        public_key=key,
        broker=BrokerSettings(host="localhost", port=port, password=password, ca_file=ca),
    )
    return DeviceAgent(config)


def test_cli_writes_the_files_from_the_database_and_refuses_half_tls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fedfleet.cli import build_app

    app = build_app()  # `fedfleet fleet broker-config` is mounted by the root

    url = f"sqlite:///{tmp_path / 'fleet.db'}"
    runner = CliRunner()
    # The database must be named, and exist: no silent ./fleet-data/fleet.db any more.
    monkeypatch.delenv("FEDFLEET_FLEET_DATABASE_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    unnamed = runner.invoke(app, ["fleet", "broker-config", "--out", "out"])
    assert unnamed.exit_code == 2 and "--database-url" in unnamed.output
    absent = runner.invoke(app, ["fleet", "broker-config", "--out", "out", "--database-url", url])
    assert (
        absent.exit_code == 2 and f"no fleet database at {tmp_path / 'fleet.db'}" in absent.output
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    assert runner.invoke(app, ["fleet", "migrate", "--database-url", url]).exit_code == 0
    result = runner.invoke(
        app, ["fleet", "broker-config", "--out", str(tmp_path / "out"), "--database-url", url]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "acl").is_file() and "0 devices" in result.output
    bad = runner.invoke(
        app,
        [
            "fleet",
            "broker-config",
            "--out",
            str(tmp_path / "o2"),
            "--tls-cert",
            "x.pem",
            "--database-url",
            url,
        ],
    )
    assert bad.exit_code == 2 and "--tls-key" in bad.output
    assert not (tmp_path / "o2").exists()
    # --replicas: a user and password file each; a bad name is one line, nothing written.
    out = ["--out", str(tmp_path / "o3"), "--database-url", url]
    named = runner.invoke(app, ["fleet", "broker-config", *out, "--replicas", "a,b"])
    assert named.exit_code == 0, named.output
    assert (tmp_path / "o3" / "fleet-a.pass").is_file()
    assert f"{FLEET_USER}-b:$7$" in (tmp_path / "o3" / "passwd").read_text()
    out = ["--out", str(tmp_path / "o4"), "--database-url", url]
    wrong = runner.invoke(app, ["fleet", "broker-config", *out, "--replicas", "a,b/c"])
    assert wrong.exit_code == 2 and "replica name 'b/c'" in wrong.output
    assert not (tmp_path / "o4").exists()


class Session:
    """A device-like client: chosen client id, persistent session, Last Will on a status topic."""

    def __init__(
        self, port: int, user: str, *, client_id: str, clean: bool, will_topic: str | None = None
    ) -> None:
        self.got: list[tuple[str, bytes]] = []
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.disconnects: list[str] = []
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean,
            protocol=mqtt.MQTTv311,
        )
        self.client.username_pw_set(user, PASSWORDS[user])
        if will_topic is not None:
            self.client.will_set(will_topic, b"offline", qos=1)
        self.client.on_connect = lambda *_: self.connected.set()
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_disconnect = lambda _c, _u, _f, reason, _p: self.disconnects.append(
            str(reason)
        )
        self.client.on_message = lambda _c, _u, m: self.got.append((m.topic, bytes(m.payload)))
        self.client.reconnect_delay_set(min_delay=30, max_delay=30)  # no reconnect fights
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def generated_broker() -> Iterator[tuple[MosquittoProcess, str]]:
    """Mosquitto running the ``mosquitto.conf`` that ``write_broker_config`` generated."""
    folder = Path(tempfile.mkdtemp(prefix="fedfleet-sessions-"))
    os.chmod(folder, 0o755)  # Mosquitto started as root reads it as the 'mosquitto' user
    port = free_port()
    files = write_broker_config(
        out=folder / "broker",
        devices=[(user, mosquitto_hash(pw)) for user, pw in PASSWORDS.items()],
        port=port,
    )
    process = MosquittoProcess(config=files.conf, port=port)
    try:
        yield process.start(), files.fleet_password_file.read_text().strip()
    finally:
        process.close()
        shutil.rmtree(folder, ignore_errors=True)


def test_a_device_cannot_take_over_another_devices_session(
    generated_broker: tuple[MosquittoProcess, str],
) -> None:
    # Prepare: the fleet watches statuses; b holds a persistent session with a Last Will.
    process, fleet_password = generated_broker
    status_b, cmd_b = proto.topic("dev-bbbb", "status"), proto.topic("dev-bbbb", "cmd")
    fleet = Listener(process.port, FLEET_USER, fleet_password, [proto.uplink_filter("status")])
    b = Session(process.port, "dev-bbbb", client_id="dev-bbbb", clean=False, will_topic=status_b)
    attackers: list[Session] = []
    try:
        assert _wait(lambda: fleet.subscribed.is_set() and b.connected.is_set())
        b.client.subscribe(cmd_b, qos=1)
        assert _wait(b.subscribed.is_set)
        # Execute 1: a connects with its own password and b's client id, a clean session.
        attackers.append(Session(process.port, "dev-aaaa", client_id="dev-bbbb", clean=True))
        assert _wait(attackers[-1].connected.is_set)
        time.sleep(1.0)  # a takeover would have ended b's connection and fired its Will by now
        # Assert 1: b is still connected and its Will was not published.
        assert b.disconnects == [] and b.client.is_connected()
        assert fleet.got == []
        # Execute 2: b goes away cleanly; the fleet queues a command for it; a tries again
        # with a clean session (a takeover would erase b's queue); b comes back.
        b.close()
        fleet.client.publish(cmd_b, b"queued-for-b", qos=1).wait_for_publish(5)
        attackers.append(Session(process.port, "dev-aaaa", client_id="dev-bbbb", clean=True))
        assert _wait(attackers[-1].connected.is_set)
        time.sleep(0.3)
        b = Session(process.port, "dev-bbbb", client_id="dev-bbbb", clean=False)
        assert _wait(lambda: b.got != [])
    finally:
        for client in (fleet, b, *attackers):
            client.close()
    # Assert 2: b's queued command survived; a never received it.
    assert b.got == [(cmd_b, b"queued-for-b")]
    assert all(attacker.got == [] for attacker in attackers)


def test_the_generated_config_loads_with_only_the_shared_artifact_warning(
    generated_broker: tuple[MosquittoProcess, str],
) -> None:
    # Every ACL pattern names the user (%u) but the shared artifact topics' read: one
    # pattern line instead of a user section per device (Mosquitto 2.0 loads those in
    # O(n^2)); Mosquitto warns about that one line, and nothing else.
    process, _ = generated_broker
    log = process.log.read_text()
    assert "running" in log
    warnings = [line.split(": ", 1)[1] for line in log.splitlines() if "Warning" in line]
    assert warnings == [
        f"Warning: ACL pattern '{proto.ARTIFACT_FILTER}' does not contain '%c' or '%u'."
    ], log
    assert "use_username_as_clientid true" in process.conf.read_text()


def test_the_device_agent_works_with_one_session_per_user(
    tmp_path: Path, generated_broker: tuple[MosquittoProcess, str]
) -> None:
    # Prepare: the fleet listens to statuses on the generated config's broker.
    process, fleet_password = generated_broker
    fleet = Listener(process.port, FLEET_USER, fleet_password, [proto.uplink_filter("status")])
    agent = _tls_agent(tmp_path, port=process.port, ca=None, password=PASSWORDS["dev-aaaa"])
    try:
        assert _wait(fleet.subscribed.is_set)
        # Execute: the real agent connects (client id = its device id = its user name).
        agent.start()
        got_status = _wait(
            lambda: any(t == proto.topic("dev-aaaa", "status") for t, _ in fleet.got)
        )
    finally:
        agent.stop()
        fleet.close()
    # Assert: connected and published its status; the broker named its session after it.
    assert got_status
    assert re.search(r"as dev-aaaa \(p2, c0, k\d+, u'dev-aaaa'\)", process.log.read_text())
