"""The agent's battery reader on a fake /sys/class/power_supply, and its telemetry fields."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_client.battery import read_battery
from edge_client.device_config import load_config
from edge_client.protocol import mqtt as proto


def _supply(root: Path, name: str, **files: str) -> None:
    (root / name).mkdir(parents=True)
    for key, value in files.items():
        (root / name / key).write_text(value + "\n")


def test_reads_the_first_battery_and_ignores_mains_and_broken_entries(tmp_path: Path) -> None:
    _supply(tmp_path, "AC", type="Mains", online="1")
    _supply(tmp_path, "BAT0", type="Battery", capacity="oops", status="Discharging")
    _supply(tmp_path, "BAT1", type="Battery", capacity="73", status="Discharging")
    _supply(tmp_path, "BAT2", type="Battery", capacity="10", status="Charging")
    assert read_battery(tmp_path) == proto.Battery(level=0.73, charging=False)
    for status, charging in (("Charging", True), ("Full", True), ("Not charging", False)):
        _supply(tmp_path / status, "BAT", type="Battery", capacity="100", status=status)
        assert read_battery(tmp_path / status) == proto.Battery(level=1.0, charging=charging)
    _supply(tmp_path / "odd", "BAT", type="Battery", capacity="104", status="Unknown")
    assert read_battery(tmp_path / "odd") == proto.Battery(level=1.0, charging=False)
    assert read_battery(tmp_path / "missing") is None
    assert read_battery(tmp_path / "Charging" / "BAT") is None  # no supplies under it


def test_telemetry_carries_battery_and_region_and_refuses_a_level_out_of_range() -> None:
    message = proto.Telemetry(
        seq=1,
        window_s=60.0,
        count=0,
        latency_p50_ms=0.0,
        latency_p95_ms=0.0,
        battery=proto.Battery(level=0.5, charging=True),
        region="US-CAL-CISO",
    )
    assert proto.decode(proto.encode(message), channel="telemetry") == message
    body = proto.encode(message).replace(b'"level":0.5', b'"level":1.5')
    with pytest.raises(proto.ProtocolError, match=r"battery level must be in \[0, 1\]"):
        proto.decode(body, channel="telemetry")
    bad_region = proto.encode(message).replace(b"US-CAL-CISO", b"DE/../x")
    with pytest.raises(proto.ProtocolError, match="region must be 1-32 letters"):
        proto.decode(bad_region, channel="telemetry")
    # Left out when unknown: fleets that predate the fields accept the message.
    plain = proto.encode(proto.Status(online=True))
    assert b"region" not in plain and b"battery" not in plain


def test_device_toml_region_is_checked(tmp_path: Path) -> None:
    base = 'device_id = "dev-1"\ntarget = "rpi5"\nslots_dir = "s"\npublic_key = "k"\n'
    path = tmp_path / "device.toml"
    path.write_text(base + 'region = "FR"\npower_supply_dir = "ps"\n')
    config = load_config(path)
    assert config.region == "FR" and config.power_supply_dir == tmp_path / "ps"
    path.write_text(base + 'region = "France, mostly"\n')
    with pytest.raises(ValueError, match="region 'France, mostly': region must be 1-32"):
        load_config(path)


def test_the_agent_reports_its_battery_and_region(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from edge_client.device_agent import DeviceAgent
    from edge_client.device_config import DeviceConfig

    key = tmp_path / "fleet.pub"
    key.write_bytes(
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    _supply(tmp_path / "ps", "BAT0", type="Battery", capacity="42", status="Charging")
    config = DeviceConfig(
        device_id="dev-b",
        target="cpu-x86",
        slots_dir=tmp_path / "s",
        public_key=key,
        region="SE",
        power_supply_dir=tmp_path / "ps",
    )
    sent: list[proto.Message] = []
    for dir_ in (config.power_supply_dir, None):
        agent = DeviceAgent(config.with_changes(power_supply_dir=dir_))
        agent._publish = lambda channel, message, retain=False: sent.append(message)  # type: ignore[method-assign,misc]
        agent._publish_telemetry(0.0)
        agent.publish_status()
    telemetry, status, unread, _ = sent
    assert isinstance(telemetry, proto.Telemetry) and isinstance(status, proto.Status)
    assert telemetry.battery == proto.Battery(level=0.42, charging=True)
    assert telemetry.region == "SE" and status.region == "SE"
    assert isinstance(unread, proto.Telemetry) and unread.battery is None  # None: never read
