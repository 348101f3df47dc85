"""NATS (MQTT enabled) as the clustered broker: its configuration from the fleet's devices.

``fedfleet fleet broker-config --broker nats --out DIR`` writes ``DIR/nats.conf``
(mode 0600: it holds the fleet's password) and a JetStream store folder ``DIR/jetstream``.
Mosquitto stays the embedded default (:mod:`fleet.ota.broker_config`); NATS is the path
when one broker process is not enough: NATS servers cluster (``cluster { routes }``) and
its MQTT sessions, retained messages and QoS 1 queues live in JetStream, replicated with
the cluster (docs/scale-out.md).

The permissions are today's Mosquitto ACL (:func:`fleet.ota.broker_config.acl_text`) in
NATS terms. NATS maps an MQTT topic to a subject: ``/`` becomes ``.``, ``+`` ``*`` and
``#`` ``>`` (:func:`subject`). So a device may publish only its own uplink subjects and
subscribe only to its own downlink subjects and the shared artifact chunks; the fleet
user may use every ``fedfleet.v1.>`` subject. NATS delivers QoS 1 messages to an MQTT
session through an internal ``$MQTT.sub.<random>`` subject, which each user must be
allowed to subscribe to (tests/e2e/test_broker_nats.py shows that this does not let a
device read another device's commands).

What NATS 2.9 (Debian's package) does not do that the fleet relies on with Mosquitto:

- it verifies passwords in clear or bcrypt only, not the PBKDF2 ``$7$`` hashes the fleet
  keeps (it never keeps a device password). Devices whose only credential is a ``$7$``
  hash are therefore left out of ``nats.conf`` (and cannot log in) and the command says
  how many; a caller that holds the passwords (a re-keying, the test kit) passes them.
- it has no ``use_username_as_clientid``: a session is named by the client id a client
  sends, so a device with its own valid password that sends another device's client id
  replaces that device's connection (NATS logs "Replacing old client"). It still cannot
  read or publish on the other device's topics (its permissions are its own).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from edge_client.protocol.mqtt import (
    ARTIFACT_FILTER,
    DOWNLINK,
    MAX_PACKET_BYTES,
    TOPIC_ROOT,
    UPLINK,
    check_device_id,
)

MOSQUITTO_HASH_PREFIX = "$7$"
# Where NATS delivers QoS 1 messages to an MQTT session (an internal subject).
MQTT_DELIVERY = "$MQTT.sub.>"


def subject(topic: str) -> str:
    """The NATS subject of an MQTT topic or filter (``a/+/#`` -> ``a.*.>``)."""
    mapped = []
    for part in topic.split("/"):
        if not part or "." in part or " " in part:
            raise ValueError(f"MQTT topic {topic!r} has no NATS subject (empty level or '.')")
        mapped.append({"+": "*", "#": ">"}.get(part, part))
    return ".".join(mapped)


def device_permissions(device_id: str) -> tuple[list[str], list[str]]:
    """``(publish, subscribe)`` subjects a device may use: its own topics, the chunks."""
    check_device_id(device_id)
    if "." in device_id:
        raise ValueError(
            f"device id {device_id!r} contains '.', which NATS reads as a subject "
            "separator; NATS cannot hold this fleet (use Mosquitto)"
        )
    publish = [subject(f"{TOPIC_ROOT}/dev/{device_id}/{c}") for c in UPLINK]
    own = [subject(f"{TOPIC_ROOT}/dev/{device_id}/{c}") for c in DOWNLINK]
    return publish, [*own, subject(ARTIFACT_FILTER), MQTT_DELIVERY]


def _quote(text: str) -> str:
    if any(ch in text for ch in '"\\\n'):
        raise ValueError(f"refusing a NATS config value with a quote or newline: {text[:20]!r}")
    return f'"{text}"'


def _list(items: Iterable[str]) -> str:
    return "[" + ", ".join(_quote(i) for i in items) + "]"


def nats_conf_text(
    *,
    devices: Iterable[tuple[str, str]],
    fleet_user: str,
    fleet_password: str,
    store_dir: Path,
    port: int = 1883,
    client_port: int = 4222,
    bind: str = "127.0.0.1",
    server_name: str = "fedfleet-1",
) -> tuple[str, int]:
    """``nats.conf`` for these ``(device id, password)`` pairs; ``(text, devices kept)``.

    A password that is a Mosquitto ``$7$`` hash cannot be checked by NATS: that device
    is left out (see the module docstring).
    """
    for value in (port, client_port):
        if not 1 <= value <= 65535:
            raise ValueError(f"port {value} must be 1..65535")
    root = subject(f"{TOPIC_ROOT}/#")
    users = [
        f"    {{user: {_quote(fleet_user)}, password: {_quote(fleet_password)}, permissions: "
        f"{{publish: {_list([root])}, subscribe: {_list([root, MQTT_DELIVERY])}}}}}"
    ]
    kept = 0
    for device_id, password in devices:
        publish, subscribe = device_permissions(device_id)
        if password.startswith(MOSQUITTO_HASH_PREFIX):
            continue
        kept += 1
        users.append(
            f"    {{user: {_quote(device_id)}, password: {_quote(password)}, permissions: "
            f"{{publish: {_list(publish)}, subscribe: {_list(subscribe)}}}}}"
        )
    lines = [
        "# Generated by fedfleet fleet broker-config --broker nats.",
        f"server_name: {_quote(server_name)}",
        f"listen: {_quote(f'{bind}:{client_port}')}",
        # Every message of the contract fits; a bigger publish is refused by the broker.
        f"max_payload: {MAX_PACKET_BYTES}",
        f"jetstream {{ store_dir: {_quote(str(store_dir))} }}",
        f"mqtt {{ listen: {_quote(f'{bind}:{port}')} }}",
        "authorization {",
        "  users = [",
        *users,
        "  ]",
        "}",
    ]
    return "\n".join(lines) + "\n", kept


def write_nats_config(
    *,
    out: Path,
    devices: Iterable[tuple[str, str]],
    port: int = 1883,
    client_port: int = 4222,
    bind: str = "127.0.0.1",
) -> tuple[Path, int, int]:
    """Write ``out/nats.conf`` (0600) and create ``out/jetstream``; ``(conf, kept, left out)``.

    ``devices`` are ``(device id, password)`` pairs; the fleet's password is kept in
    ``out/fleet.pass`` as with Mosquitto. Nothing is written when a value is refused.
    """
    from fleet.ota.broker_config import FLEET_USER, fleet_password, write_file

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder; choose a folder")
    pairs = list(devices)
    store = out.resolve() / "jetstream"
    # Checked before anything is written: a refused device or port leaves no file behind.
    for device_id, _ in pairs:
        device_permissions(device_id)
    for value in (port, client_port):
        if not 1 <= value <= 65535:
            raise ValueError(f"port {value} must be 1..65535")
    out.mkdir(parents=True, exist_ok=True)
    password = fleet_password(out / "fleet.pass")
    text, kept = nats_conf_text(
        devices=pairs,
        fleet_user=FLEET_USER,
        fleet_password=password,
        store_dir=store,
        port=port,
        client_port=client_port,
        bind=bind,
    )
    store.mkdir(exist_ok=True)
    write_file(out / "nats.conf", text, mode=0o600)
    return out / "nats.conf", kept, len(pairs) - kept
