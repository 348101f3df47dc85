"""The signed command envelope: the exact bytes a fleet signs and a device verifies.

A command (``edge_client.protocol.mqtt.Command``) is only a request until it is signed:
the fleet signs, with Ed25519 under its command key (by default the key its bundles are
signed with), the canonical JSON of::

    {"action", "artifact_sha256", "command_id", "device", "expires_at", "issued_at",
     "model_version_id", "rollout_id", "v": 1}

prefixed with :data:`DOMAIN` (so a command signature is never a valid bundle signature,
and the other way round). ``device`` binds it to one device, ``issued_at`` (Unix
milliseconds, strictly increasing per device) makes a replay detectable, ``expires_at``
bounds how long a queued command stays valid. ``telemetry_bins`` is not covered: it only
shapes what the device reports. ``docs/mqtt.md`` ("Signed commands") is the contract
for people.

Imports only the standard library (device side).
"""

from __future__ import annotations

import json

from edge_client.protocol.mqtt import Command

DOMAIN = b"fedfleet-command-v1\n"


def envelope_bytes(device_id: str, command: Command) -> bytes:
    """The bytes the signature covers (domain prefix + canonical JSON)."""
    body = {
        "v": 1,
        "device": device_id,
        "command_id": command.command_id,
        "action": command.action,
        "rollout_id": command.rollout_id,
        "model_version_id": command.model_version_id,
        "artifact_sha256": command.artifact.sha256 if command.artifact is not None else None,
        "issued_at": command.issued_at,
        "expires_at": command.expires_at,
    }
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return DOMAIN + text.encode("ascii")
