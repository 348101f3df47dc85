"""Which fleet commands a device obeys: the signed envelope checked against its key.

A command is authentic when its ``signature`` verifies, with the device's command key
(the fleet's signing key), over :func:`edge_client.protocol.command_envelope.envelope_bytes`
for *this* device; it is fresh when ``issued_at`` is after the last authentic command the
device accepted (kept on disk in its floor, :mod:`edge_client.floor`) and ``expires_at``
is not past on the device's clock. ``rollback`` must be authentic and fresh; a signed
``install`` or ``ping`` must be too (an unsigned install is allowed: the bundle carries
its own signature and release, but its ``model_version_id`` is then not believed).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge_client.protocol.command_envelope import envelope_bytes
from edge_client.protocol.mqtt import Command


@dataclass(frozen=True)
class Verdict:
    """``ok``: act on it; ``duplicate``: the last accepted command again (QoS 1 may
    deliver twice; nothing to do); else ``reason`` says why it is refused."""

    ok: bool
    signed: bool = False
    duplicate: bool = False
    reason: str = ""


def check_command(
    command: Command,
    *,
    device_id: str,
    public_key: Ed25519PublicKey,
    last_issued_at: int,
    last_command_id: str,
    now_ms: int,
) -> Verdict:
    """Decide whether the device acts on ``command`` (see the module doc)."""
    if command.signature is None:
        if command.action == "rollback":
            return Verdict(
                ok=False,
                reason="an unsigned rollback is refused: rollbacks must be signed with the "
                "fleet's command key (`fedfleet fleet mqtt --command-key`)",
            )
        return Verdict(ok=True)
    try:
        raw = base64.b64decode(command.signature, validate=True)
        public_key.verify(raw, envelope_bytes(device_id, command))
    except (binascii.Error, ValueError, InvalidSignature):
        return Verdict(
            ok=False,
            reason="the command's signature does not verify with this device's key "
            "(signed for another device, altered, or by another key)",
        )
    issued, expires = command.issued_at or 0, command.expires_at or 0
    if issued == last_issued_at and command.command_id == last_command_id:
        return Verdict(ok=False, signed=True, duplicate=True)
    if issued <= last_issued_at:
        return Verdict(
            ok=False,
            reason=f"a replayed command is refused: issued_at {issued} is not after the last "
            f"accepted command's {last_issued_at}",
        )
    if expires < now_ms:
        return Verdict(
            ok=False,
            reason=f"an expired command is refused: expires_at {expires} is before this "
            f"device's clock {now_ms} (Unix ms)",
        )
    return Verdict(ok=True, signed=True)
