"""The seam every message the kit receives passes: ``validate(channel, payload)``.

A vendor's agent is held to the normative form of the protocol: each JSON message must
validate against its device protocol v2 JSON Schema (``edge_client/protocol/schemas/v2``,
docs/device-protocol.md), and then pass the wire codec of :mod:`edge_client.protocol.mqtt`,
which adds the rules a schema cannot state (size, integers without a fraction, the
artifact's chunk count) and gives the kit the decoded message.
"""

from __future__ import annotations

import json
from functools import cache

import jsonschema

from edge_client.protocol import mqtt as proto
from edge_client.protocol import schemas

ProtocolError = proto.ProtocolError


@cache
def _validator(channel: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(schemas.schema(schemas.CHANNEL_MESSAGE[channel]))


def _schema_errors(channel: str, payload: bytes) -> str | None:
    """What the channel's schema refuses in ``payload`` (None when it validates, or when
    the payload is not JSON: the codec then says why)."""
    try:
        doc = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    try:
        error = jsonschema.exceptions.best_match(_validator(channel).iter_errors(doc))
    except RecursionError:
        return "nested too deeply"
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "(the message)"
    name = schemas.CHANNEL_MESSAGE[channel]
    return f"does not follow schema {name}.json at {where}: {error.message[:200]}"


def validate(channel: proto.Channel, payload: bytes) -> proto.Message | proto.Chunk:
    """The decoded message of ``payload`` on ``channel``; raise :class:`ProtocolError`
    saying what is wrong when it does not follow the contract."""
    if channel == "chunk":
        return proto.decode_chunk(payload)
    if len(payload) <= proto.MAX_JSON_BYTES:
        problem = _schema_errors(channel, payload)
        if problem is not None:
            raise ProtocolError(problem)
    return proto.decode(payload, channel=channel)
