"""NATS with MQTT enabled, the clustered broker: its generated config, on a real nats-server.

The permission tests shared with Mosquitto run on both brokers in test_broker_config.py
(its ``broker`` fixture); these are what is NATS's own: the subject mapping, the internal
delivery subject, retained status and Last Will, the packet limit, the client-id gap,
and ``fedfleet fleet broker-config --broker nats``.
"""

from __future__ import annotations

import os
import socket
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "e2e"))

from broker_process import NatsProcess, free_port

from edge_client.protocol import mqtt as proto
from fleet.credentials import mosquitto_hash
from fleet.ota.broker_config import FLEET_USER, check_broker
from fleet.ota.broker_nats import device_permissions, subject, write_nats_config
from tests.fleet.test_broker_config import PASSWORDS, Listener, Session, _wait

pytestmark = pytest.mark.e2e


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[tuple[NatsProcess, str]]:
    port = free_port()
    conf, kept, left_out = write_nats_config(
        out=tmp_path / "nats", devices=list(PASSWORDS.items()), port=port, client_port=free_port()
    )
    assert (kept, left_out) == (2, 0)
    process = NatsProcess(config=conf, port=port)
    try:
        yield process.start(), (tmp_path / "nats" / "fleet.pass").read_text().strip()
    finally:
        process.close()


# --- unit and property ----------------------------------------------------------------


def test_topics_map_to_subjects_and_devices_get_only_their_own() -> None:
    assert subject("fedfleet/v1/dev/+/status") == "fedfleet.v1.dev.*.status"
    assert subject("fedfleet/v1/#") == "fedfleet.v1.>"
    publish, sub = device_permissions("dev-aaaa")
    assert publish == [f"fedfleet.v1.dev.dev-aaaa.{c}" for c in proto.UPLINK]
    assert sub[:2] == ["fedfleet.v1.dev.dev-aaaa.cmd", "fedfleet.v1.dev.dev-aaaa.chunk"]
    assert sub[2:] == ["fedfleet.v1.artifacts.*.chunk", "$MQTT.sub.>"]
    with pytest.raises(ValueError, match="subject separator"):
        device_permissions("dev.aaaa")
    with pytest.raises(ValueError, match="no NATS subject"):
        subject("a//b")


@given(st.lists(st.from_regex(r"[a-z0-9_-]{1,8}", fullmatch=True), min_size=1, max_size=6))
def test_subject_is_the_topic_with_dots(levels: list[str]) -> None:
    assert subject("/".join(levels)).split(".") == levels


def test_unknown_broker_names_are_refused_in_one_line() -> None:
    assert check_broker("nats") == "nats" and check_broker("mosquitto") == "mosquitto"
    with pytest.raises(ValueError, match=r"unknown broker 'rabbitmq'.*wildcard") as err:
        check_broker("rabbitmq")
    assert "\n" not in str(err.value)


def test_a_refused_device_leaves_nothing_written(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="subject separator"):
        write_nats_config(out=tmp_path / "o", devices=[("dev.a", "pw")])
    assert not (tmp_path / "o").exists()


# --- on a real nats-server -------------------------------------------------------------


def test_a_device_cannot_read_other_commands_through_the_delivery_subject(
    nats: tuple[NatsProcess, str],
) -> None:
    # Prepare: b takes its commands; a subscribes to the internal delivery subject and to all.
    process, fleet_password = nats
    cmd_b = proto.topic("dev-bbbb", "cmd")
    fleet = Listener(process.port, FLEET_USER, fleet_password, [])
    dev_b = Listener(process.port, "dev-bbbb", PASSWORDS["dev-bbbb"], [cmd_b])
    dev_a = Listener(process.port, "dev-aaaa", PASSWORDS["dev-aaaa"], ["$MQTT/sub/#", "#"])
    try:
        assert _wait(lambda: dev_b.subscribed.is_set() and dev_a.subscribed.is_set())
        # Execute
        fleet.client.publish(cmd_b, b"for-b", qos=1).wait_for_publish(5)
        assert _wait(lambda: dev_b.got != [])
        time.sleep(0.5)
    finally:
        for client in (fleet, dev_a, dev_b):
            client.close()
    # Assert
    assert dev_b.got == [(cmd_b, b"for-b")] and dev_a.got == []


def test_retained_status_reaches_a_late_wildcard_subscriber_and_the_will_fires(
    nats: tuple[NatsProcess, str],
) -> None:
    # Prepare: b publishes a retained status, with a Last Will on it, before the fleet subscribes.
    process, fleet_password = nats
    status_b = proto.topic("dev-bbbb", "status")
    b = Session(process.port, "dev-bbbb", client_id="dev-bbbb", clean=False, will_topic=status_b)
    try:
        assert _wait(b.connected.is_set)
        b.client.publish(status_b, b"online", qos=1, retain=True).wait_for_publish(5)
        fleet = Listener(process.port, FLEET_USER, fleet_password, [proto.uplink_filter("status")])
        assert _wait(lambda: fleet.got != [])
        # Execute: b's connection drops without a DISCONNECT.
        sock = b.client.socket()
        assert isinstance(sock, socket.socket)
        sock.shutdown(socket.SHUT_RDWR)
        assert _wait(lambda: len(fleet.got) >= 2)
    finally:
        b.client.loop_stop()
        fleet.close()
    # Assert: the retained status first (the fleet's wildcard filter), then the Will.
    assert fleet.got[:2] == [(status_b, b"online"), (status_b, b"offline")]


def test_known_gap_a_publish_over_the_packet_limit_passes_nats_to_the_fleet(
    nats: tuple[NatsProcess, str],
) -> None:
    # NATS 2.9 does not hold MQTT publishes to max_payload: a 2 MB publish reaches the
    # fleet, whose guard drops it as poison (docs/security.md); a full chunk passes too.
    process, fleet_password = nats
    telemetry_a = proto.topic("dev-aaaa", "telemetry")
    fleet = Listener(process.port, FLEET_USER, fleet_password, [telemetry_a])
    dev_a = Listener(process.port, "dev-aaaa", PASSWORDS["dev-aaaa"], [])
    try:
        assert _wait(lambda: fleet.subscribed.is_set() and dev_a.connected == [True])
        dev_a.client.publish(telemetry_a, b"x" * 2_000_000, qos=1)
        time.sleep(1.0)
        fleet.client.reconnect_delay_set(1, 1)
        big = b"y" * (proto.MAX_PACKET_BYTES - 1024)
        writer = Listener(process.port, "dev-aaaa", PASSWORDS["dev-aaaa"], [])
        assert _wait(lambda: writer.connected == [True])
        writer.client.publish(telemetry_a, big, qos=1).wait_for_publish(5)
        assert _wait(lambda: fleet.got != [])
        time.sleep(0.3)
    finally:
        for client in (fleet, dev_a):
            client.close()
        writer.close()
    assert [len(payload) for _, payload in fleet.got] == [2_000_000, len(big)]


def test_known_gap_a_device_can_replace_another_devices_connection(
    nats: tuple[NatsProcess, str],
) -> None:
    # NATS has no use_username_as_clientid: a's own credentials and b's client id replace
    # b's connection (docs/security.md, the NATS row). a still gets none of b's messages.
    process, fleet_password = nats
    cmd_b = proto.topic("dev-bbbb", "cmd")
    b = Session(process.port, "dev-bbbb", client_id="dev-bbbb", clean=False)
    attacker: Session | None = None
    fleet = Listener(process.port, FLEET_USER, fleet_password, [])
    try:
        assert _wait(lambda: b.connected.is_set() and fleet.connected == [True])
        attacker = Session(process.port, "dev-aaaa", client_id="dev-bbbb", clean=True)
        assert _wait(attacker.connected.is_set)
        assert _wait(lambda: b.disconnects != [])
        attacker.client.subscribe(cmd_b, qos=1)
        fleet.client.publish(cmd_b, b"for-b", qos=1).wait_for_publish(5)
        time.sleep(0.5)
    finally:
        for client in (b, fleet, *([attacker] if attacker else [])):
            client.close()
    assert b.disconnects != [] and attacker is not None and attacker.got == []


def test_cli_writes_nats_conf_and_says_which_devices_it_left_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ota_testkit import enroll_devices

    from fedfleet.cli import build_app
    from fleet import migrate
    from fleet.db import make_engine

    url = f"sqlite:///{tmp_path / 'fleet.db'}"
    engine = make_engine(url)
    migrate.upgrade(engine)
    enroll_devices(engine, count=2, group="g", target="cpu-x86")
    engine.dispose()
    monkeypatch.delenv("FEDFLEET_FLEET_DATABASE_URL", raising=False)
    runner = CliRunner()
    app = build_app()
    # Execute: an unknown broker, then NATS.
    unknown = runner.invoke(
        app,
        [
            "fleet",
            "broker-config",
            "--broker",
            "kafka",
            "--out",
            str(tmp_path / "k"),
            "--database-url",
            url,
        ],
    )
    result = runner.invoke(
        app,
        [
            "fleet",
            "broker-config",
            "--broker",
            "nats",
            "--out",
            str(tmp_path / "n"),
            "--database-url",
            url,
        ],
    )
    # Assert: one line and nothing written; then nats.conf (0600) with the fleet user only,
    # and the two devices named as left out ($7$ hashes NATS cannot check).
    assert unknown.exit_code == 2 and "unknown broker 'kafka'" in unknown.output
    assert len(unknown.output.strip().splitlines()) == 1 and not (tmp_path / "k").exists()
    assert result.exit_code == 0, result.output
    conf = tmp_path / "n" / "nats.conf"
    assert stat.S_IMODE(os.stat(conf).st_mode) == 0o600
    assert "2 devices are left out" in result.output and FLEET_USER in conf.read_text()
    assert "$7$" not in conf.read_text() and mosquitto_hash("x")[:3] == "$7$"


def test_nats_server_accepts_the_generated_config_and_refuses_strangers(
    nats: tuple[NatsProcess, str],
) -> None:
    process, _ = nats
    stranger = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="zz")
    stranger.username_pw_set("dev-zzzz", "whatever")
    codes: list[bool] = []
    stranger.on_connect = lambda _c, _u, _f, reason, _p: codes.append(reason.is_failure)
    stranger.connect("127.0.0.1", process.port)
    stranger.loop_start()
    try:
        assert _wait(lambda: codes != [])
    finally:
        stranger.loop_stop()
    assert codes == [True] and "Server is ready" in process.log.read_text()
