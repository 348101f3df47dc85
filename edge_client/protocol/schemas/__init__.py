"""The JSON Schemas of device protocol v2: the normative form of every message.

One file per message in ``v2/`` (Draft 2020-12), shipped with the package; the text that
goes with them is ``docs/device-protocol.md``. The codec in
:mod:`edge_client.protocol.mqtt` is the fast path both the fleet and the agent run; the
test suite proves it accepts exactly what these schemas accept (plus the few rules JSON
Schema cannot state, listed in :data:`EXTRA_RULES`).

Imports only the standard library (device side): a validator (``jsonschema``) is needed
only to *use* the schemas, as the tests and a vendor's own tools do.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

PROTOCOL_VERSION = 2
SCHEMA_DIR = Path(__file__).resolve().parent / f"v{PROTOCOL_VERSION}"

# Message type ("type" field) or other document -> its schema file in SCHEMA_DIR.
MESSAGES = ("status", "heartbeat", "telemetry", "command", "ack", "chunk-req", "feedback")
DOCUMENTS = (*MESSAGES, "chunk-header", "command-envelope", "drift-reference")
# Topic channel -> the message type it carries.
CHANNEL_MESSAGE = {
    "status": "status",
    "heartbeat": "heartbeat",
    "telemetry": "telemetry",
    "ack": "ack",
    "chunk-req": "chunk-req",
    "cmd": "command",
    "feedback": "feedback",
}

# What every receiver checks beyond the schemas (JSON Schema cannot say these).
EXTRA_RULES = (
    "a JSON message is at most 1 MiB (MAX_JSON_BYTES) of UTF-8",
    "an integer is written without a fraction or exponent (3, not 3.0 or 3e0), "
    "in at most 20 digits",
    "command.artifact.chunk_sha256 has exactly ceil(size / chunk_size) entries",
    "no duplicate keys are relied on (the last one wins, as in most JSON parsers)",
)


@cache
def _load(name: str) -> str:
    if name not in DOCUMENTS:
        raise ValueError(f"unknown schema {name!r}; expected one of {DOCUMENTS}")
    return (SCHEMA_DIR / f"{name}.json").read_text(encoding="utf-8")


def schema(name: str) -> dict[str, Any]:
    """The JSON Schema of message (or document) ``name`` as a fresh dict."""
    return json.loads(_load(name))  # type: ignore[no-any-return]


def schema_path(name: str) -> Path:
    """The file of schema ``name`` (what docs and vendors link to)."""
    _load(name)
    return SCHEMA_DIR / f"{name}.json"
