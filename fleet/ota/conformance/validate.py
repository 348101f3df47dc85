"""The seam every message the kit receives passes: ``validate(channel, payload)``.

Today it is the wire codecs of :mod:`edge_client.protocol.mqtt` (the same checks the
fleet's bridge applies); when the protocol's JSON Schemas are the truth, this function is
the one to switch, and every check of the kit follows.
"""

from __future__ import annotations

from edge_client.protocol import mqtt as proto

ProtocolError = proto.ProtocolError


def validate(channel: proto.Channel, payload: bytes) -> proto.Message | proto.Chunk:
    """The decoded message of ``payload`` on ``channel``; raise :class:`ProtocolError`
    saying what is wrong when it does not follow the contract."""
    if channel == "chunk":
        return proto.decode_chunk(payload)
    return proto.decode(payload, channel=channel)
