"""The MQTT wire contract between the fleet and its devices: topics and payloads.

Everything that crosses the broker is defined here, on the device side, and the fleet
imports it (``docs/mqtt.md`` documents the same contract for people). MQTT 3.1.1, QoS 1.

Topics (``{d}`` is the device id, which is also its broker user name)::

    fedfleet/v1/dev/{d}/status      device -> fleet  retained; Last Will = offline
    fedfleet/v1/dev/{d}/heartbeat   device -> fleet
    fedfleet/v1/dev/{d}/telemetry   device -> fleet
    fedfleet/v1/dev/{d}/ack         device -> fleet  result of a command
    fedfleet/v1/dev/{d}/chunk-req   device -> fleet  "send me these chunks"
    fedfleet/v1/dev/{d}/feedback    device -> fleet  labelled outcomes (label counts)
    fedfleet/v1/dev/{d}/cmd         fleet -> device  install / rollback / ping
    fedfleet/v1/dev/{d}/chunk       fleet -> device  binary artifact chunk (repair path)
    fedfleet/v1/artifacts/{sha}/chunk  fleet -> devices  the same frames, published once
                                    for every device fetching that artifact (read-only
                                    for devices)

JSON messages are UTF-8 objects with ``"schema": 2`` (device protocol v2; the normative
text is ``docs/device-protocol.md``, the JSON Schemas ``schemas/v2/``) and ``"type"``
naming the message. Protocol v1 messages (``"schema": 1``) are decoded only when the
receiver asks for them (:func:`decode_versioned`; the fleet, during its migration window).
An unknown schema version, a wrong type, a missing or mistyped field, or a value out of
its bounds (the ``MAX_*`` constants below: nesting, integer digits, ids, counts, lengths)
is refused with a :class:`ProtocolError` — :func:`decode` raises nothing else, whatever
the bytes (the receiver logs it and ignores the message; it never crashes).
Chunks are binary: ``b"FFC1"``, a 2-byte big-endian header length, a JSON header, then
the chunk's bytes.

A ``chunk-req`` may carry ``"via": "artifact"`` (answer on the shared artifact topic); it
is left out when it is ``"device"`` (the default).

Imports only the standard library (device side).
"""

from __future__ import annotations

import functools
import json
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

SCHEMA_VERSION = 2  # device protocol v2 (docs/device-protocol.md)
V1_SCHEMA = 1  # device protocol v1: what agents before v2 send
KNOWN_SCHEMAS = (V1_SCHEMA, SCHEMA_VERSION)
CHUNK_SCHEMA = 1  # the chunk frame's header: unchanged since v1 (its format is ``FFC1``)
TOPIC_ROOT = "fedfleet/v1"
QOS = 1
MAX_JSON_BYTES = 1024 * 1024
CHUNK_MAGIC = b"FFC1"
MAX_CHUNK_BYTES = 1024 * 1024
DEFAULT_CHUNK_BYTES = 64 * 1024
# The largest MQTT packet of this contract (a 1 MiB JSON message or chunk frame, plus its
# topic and headers): the broker's ``max_packet_size``, so a bigger publish is refused by
# the broker (the sender is disconnected) and never reaches the fleet.
MAX_PACKET_BYTES = MAX_JSON_BYTES + 64 * 1024
# Bounds of values inside messages: what the fleet stores fits its 32-bit integer columns,
# and no value can make a receiver overflow, recurse or allocate without limit.
MAX_INT_DIGITS = 20  # longer integer literals are refused before they are converted
MAX_ID = 2**31 - 1  # model_version_id, rollout_id
MAX_COUNT = 2**31 - 1  # seq, count, per-class and per-bin counts, chunk indices
MAX_SECONDS = 1e12  # window_s, uptime_s, latencies (ms): finite, 0..1e12
MAX_INDICES = 1024  # chunk indices per request
MAX_FEATURES = 4096  # features in telemetry and in a command's telemetry_bins
MAX_BINS = 1001  # bins per feature (edges per feature: MAX_BINS - 1)
MAX_CLASSES = 1000  # predicted classes counted in one telemetry message
MAX_TEXT = 4096  # any string field (command_id: 128)

# ``\Z``, not ``$``: ``$`` also matches before a trailing newline ("<64 hex>\n").
_DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
_SHA256 = re.compile(r"^[0-9a-f]{64}\Z")
# A grid region (``DE``, ``US-CAL-CISO``): letters, digits, '-' and '_', at most 32.
_REGION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}\Z")

Channel = Literal[
    "status", "heartbeat", "telemetry", "ack", "chunk-req", "feedback", "cmd", "chunk"
]
UPLINK: tuple[Channel, ...] = (
    "status",
    "heartbeat",
    "telemetry",
    "ack",
    "chunk-req",
    "feedback",
)
DOWNLINK: tuple[Channel, ...] = ("cmd", "chunk")
Action = Literal["install", "rollback", "ping"]
Via = Literal["device", "artifact"]
VIAS: tuple[Via, ...] = ("device", "artifact")
ACTIONS: tuple[Action, ...] = ("install", "rollback", "ping")


class ProtocolError(ValueError):
    """A message that does not follow this contract; ``str(err)`` says what is wrong."""


class VersionRefused(ProtocolError):
    """A well-known protocol version the receiver does not accept (``schema`` names it)."""

    def __init__(self, schema: int, accepted: tuple[int, ...]) -> None:
        names = " or ".join(f"v{v} (schema {v})" for v in accepted)
        super().__init__(
            f"a device protocol v{schema} message (schema {schema}); this peer accepts "
            f"{names} only: upgrade the sender (docs/device-protocol.md, Versioning)"
        )
        self.schema = schema


# --- topics ---------------------------------------------------------------------------


def check_device_id(device_id: str) -> str:
    """Return ``device_id`` if it is usable as a topic segment; raise ValueError otherwise."""
    if not isinstance(device_id, str) or not _DEVICE_ID.match(device_id):
        raise ValueError(
            f"device id {device_id!r} must be 1-64 letters, digits, '.', '_' or '-' "
            "(it is a topic segment and a broker user name)"
        )
    return device_id


def topic(device_id: str, channel: Channel) -> str:
    """The topic of ``channel`` for ``device_id``."""
    if channel not in UPLINK + DOWNLINK:
        raise ValueError(f"unknown channel {channel!r}; expected one of {UPLINK + DOWNLINK}")
    return f"{TOPIC_ROOT}/dev/{check_device_id(device_id)}/{channel}"


def uplink_filter(channel: Channel) -> str:
    """Subscription filter for ``channel`` from every device (the fleet subscribes)."""
    return f"{TOPIC_ROOT}/dev/+/{channel}"


def artifact_topic(sha256: str) -> str:
    """The shared topic on which the fleet publishes the chunks of artifact ``sha256`` once
    for every device fetching it (devices may read it, never write it)."""
    if not isinstance(sha256, str) or not _SHA256.match(sha256):
        raise ValueError(f"artifact id {sha256!r} must be a SHA-256 (64 lower-case hex digits)")
    return f"{TOPIC_ROOT}/artifacts/{sha256}/chunk"


ARTIFACT_FILTER = f"{TOPIC_ROOT}/artifacts/+/chunk"


def parse_artifact_topic(name: str) -> str | None:
    """The artifact SHA-256 of a shared artifact topic, or None for any other topic."""
    parts = name.split("/")
    if (
        len(parts) == 5
        and "/".join(parts[:2]) == TOPIC_ROOT
        and parts[2] == "artifacts"
        and parts[4] == "chunk"
        and _SHA256.match(parts[3])
    ):
        return parts[3]
    return None


def parse_topic(name: str) -> tuple[str, Channel]:
    """``(device_id, channel)`` of a topic of this contract; raise ProtocolError otherwise."""
    parts = name.split("/")
    if len(parts) != 5 or "/".join(parts[:2]) != TOPIC_ROOT or parts[2] != "dev":
        raise ProtocolError(f"topic {name!r} is not a fedfleet/v1 device topic")
    channel = parts[4]
    if channel not in UPLINK + DOWNLINK or not _DEVICE_ID.match(parts[3]):
        raise ProtocolError(f"topic {name!r} names an unknown channel or a bad device id")
    return parts[3], channel  # type: ignore[return-value]


# --- messages -------------------------------------------------------------------------


@dataclass(frozen=True)
class Status:
    """Retained device state. ``online=False`` is also the Last Will the broker publishes."""

    online: bool
    model_version_id: int | None = None
    model_version: str | None = None
    sha256: str | None = None
    slot: str | None = None
    target: str | None = None
    agent: str = "fedfleet"
    region: str | None = None
    type: Literal["status"] = "status"


@dataclass(frozen=True)
class Heartbeat:
    """A sign of life every ``heartbeat_s``; ``uptime_s`` in seconds since the agent started."""

    uptime_s: float
    model_version_id: int | None = None
    type: Literal["heartbeat"] = "heartbeat"


@dataclass(frozen=True)
class FeatureSummary:
    """Counts of one input feature in the reference bins (``len(edges) + 1`` counts)."""

    counts: tuple[int, ...]


@dataclass(frozen=True)
class Battery:
    """The device's battery: state of charge ``level`` in [0, 1] and whether it is
    ``charging`` (from ``/sys/class/power_supply`` on Linux)."""

    level: float
    charging: bool


@dataclass(frozen=True)
class Telemetry:
    """Inference summary over one window.

    ``count`` inferences (samples) in ``window_s`` seconds; latency percentiles in
    milliseconds per call; ``predictions`` counts per predicted class; ``features`` the
    per-feature bin counts of the inputs (bins from the install command's
    ``telemetry_bins``; empty when none were given); ``errors`` the inference calls of
    the window that raised (0 when left out: agents before it send none);
    ``battery`` the device's battery now and ``region`` its grid region (optional, left
    out when ``None``: reported by the device, so only a selection preference).
    """

    seq: int
    window_s: float
    count: int
    latency_p50_ms: float
    latency_p95_ms: float
    model_version_id: int | None = None
    predictions: dict[str, int] = field(default_factory=dict)
    features: tuple[FeatureSummary, ...] = ()
    errors: int = 0
    battery: Battery | None = None
    region: str | None = None
    type: Literal["telemetry"] = "telemetry"


@dataclass(frozen=True)
class LabelCount:
    """Labelled outcomes of one true class in a window: predictions that matched the
    label (``correct``) and those that did not (``wrong``)."""

    correct: int
    wrong: int

    @property
    def total(self) -> int:
        return self.correct + self.wrong


@dataclass(frozen=True)
class Feedback:
    """Labelled outcomes over one window (where labels come back to the device).

    ``labels`` maps a true class (as a string) to its :class:`LabelCount`, for the
    inferences of model ``model_version_id`` whose label arrived in the window.
    """

    seq: int
    window_s: float
    model_version_id: int | None = None
    labels: dict[str, LabelCount] = field(default_factory=dict)
    type: Literal["feedback"] = "feedback"


@dataclass(frozen=True)
class ArtifactRef:
    """The artifact to fetch: whole-file SHA-256, size, chunking and per-chunk SHA-256."""

    sha256: str
    size: int
    chunk_size: int
    chunk_sha256: tuple[str, ...]

    @property
    def chunks(self) -> int:
        """Number of chunks."""
        return len(self.chunk_sha256)


@dataclass(frozen=True)
class Command:
    """An order to a device. ``install`` carries ``artifact``; ``rollback`` and ``ping`` none.

    ``issued_at``/``expires_at`` (Unix milliseconds) and ``signature`` (base64 Ed25519)
    make a signed command envelope (:mod:`edge_client.protocol.command_envelope`); a
    fleet without a command key leaves all three out (and devices refuse its rollbacks).
    """

    command_id: str
    action: Action
    rollout_id: int | None = None
    model_version_id: int | None = None
    artifact: ArtifactRef | None = None
    telemetry_bins: tuple[tuple[float, ...], ...] = ()
    issued_at: int | None = None
    expires_at: int | None = None
    signature: str | None = None
    type: Literal["command"] = "command"


@dataclass(frozen=True)
class Ack:
    """Result of a command. ``ok=False`` means the previous model still runs."""

    command_id: str
    ok: bool
    action: Action
    rollout_id: int | None = None
    model_version_id: int | None = None
    error: str = ""
    stage: str = ""
    type: Literal["ack"] = "ack"


@dataclass(frozen=True)
class ChunkRequest:
    """A device asks for chunk ``indices`` of transfer ``transfer_id`` (artifact SHA-256).

    ``via="artifact"``: the device listens on :func:`artifact_topic` and the fleet may
    answer there, once for all devices asking; ``via="device"``: answer on the device's
    own ``chunk`` topic (the repair path: re-requests, resumes after a disconnect)."""

    transfer_id: str
    indices: tuple[int, ...]
    via: Via = "device"
    type: Literal["chunk-req"] = "chunk-req"


@dataclass(frozen=True)
class Chunk:
    """One chunk of an artifact: bytes at ``index * chunk_size`` of transfer ``transfer_id``."""

    transfer_id: str
    index: int
    data: bytes


Message = Status | Heartbeat | Telemetry | Command | Ack | ChunkRequest | Feedback

_TYPES: dict[str, type[Any]] = {
    "status": Status,
    "heartbeat": Heartbeat,
    "telemetry": Telemetry,
    "command": Command,
    "ack": Ack,
    "chunk-req": ChunkRequest,
    "feedback": Feedback,
}
_CHANNEL_TYPE: dict[str, str] = {
    "status": "status",
    "heartbeat": "heartbeat",
    "telemetry": "telemetry",
    "cmd": "command",
    "ack": "ack",
    "chunk-req": "chunk-req",
    "feedback": "feedback",
}


def encode(message: Message, *, schema: int = SCHEMA_VERSION) -> bytes:
    """Serialise a message to JSON bytes with the schema version (``V1_SCHEMA``: for a
    protocol v1 peer, which knows no signed command envelope)."""
    if schema not in KNOWN_SCHEMAS:
        raise ValueError(f"schema must be one of {KNOWN_SCHEMAS}, got {schema!r}")
    if schema == V1_SCHEMA and isinstance(message, Command) and message.signature is not None:
        raise ValueError("a protocol v1 agent refuses signed commands: send it unsigned")
    check_message(message)
    body = _plain(message)
    if isinstance(message, ChunkRequest) and message.via == "device":
        del body["via"]  # the default, left out: schema-1 fleets that predate it accept it
    if isinstance(message, Telemetry) and message.errors == 0:
        del body["errors"]  # the default, left out: fleets that predate it accept it
    if isinstance(message, Status | Telemetry):
        for name in ("battery", "region"):  # optional, left out when unknown
            if body.get(name, 0) is None:
                del body[name]
    if isinstance(message, Command) and message.signature is None:
        for name in _ENVELOPE_FIELDS:  # unsigned: left out, as agents before them expect
            if body[name] is None:
                del body[name]
    body["schema"] = schema
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode("utf-8")


_LEAVES = frozenset({str, int, float, bool, type(None)})


def _plain(value: Any) -> Any:
    """``dataclasses.asdict`` for the JSON encoder, without its deep copies: nested
    dataclasses become dicts, tuples lists; leaves (str, int, float, bool, None) are
    immutable, so they are shared, not copied. The same JSON, at a third of the cost
    (the fleet encodes one install command per device of a rollout)."""
    if type(value) in _LEAVES:  # most calls: one set lookup, not three type checks
        return value
    if hasattr(value, "__dataclass_fields__"):
        return {name: _plain(getattr(value, name)) for name in value.__dataclass_fields__}
    if isinstance(value, (tuple, list)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


def decode(data: bytes, *, channel: Channel | None = None) -> Message:
    """Parse and validate a protocol v2 JSON message; ``channel`` (when given) fixes the
    expected type. A v1 message is refused with :class:`VersionRefused`."""
    return decode_versioned(data, channel=channel, accept=(SCHEMA_VERSION,))[1]


def decode_versioned(
    data: bytes, *, channel: Channel | None = None, accept: tuple[int, ...] = KNOWN_SCHEMAS
) -> tuple[int, Message]:
    """``(schema, message)`` of a JSON message of one of the ``accept``-ed versions (v1
    and v2 messages have the same fields; v1 is what an older agent sends)."""
    if len(data) > MAX_JSON_BYTES:
        raise ProtocolError(f"message of {len(data)} bytes exceeds {MAX_JSON_BYTES}")
    try:
        obj = json.loads(
            data.decode("utf-8"),
            parse_constant=_refuse_constant,
            parse_int=_bounded_int,
            parse_float=_finite_float,
        )
    except (UnicodeDecodeError, ValueError) as err:
        raise ProtocolError(f"malformed JSON: {str(err)[:200]}") from None
    except RecursionError:  # the C scanner's nesting limit: refused, never raised on
        raise ProtocolError("JSON nested too deeply") from None
    if not isinstance(obj, dict):
        raise ProtocolError("a message must be a JSON object")
    schema = obj.pop("schema", None)
    if schema not in KNOWN_SCHEMAS or not _is_int(schema):
        raise ProtocolError(
            f"unknown schema version {schema!r}; this peer speaks schema {SCHEMA_VERSION} "
            "(device protocol v2)"
        )
    if schema not in accept:
        raise VersionRefused(schema, accept)
    kind = obj.get("type")
    if channel is not None:
        expected = _CHANNEL_TYPE.get(channel)
        if kind != expected:
            raise ProtocolError(f"channel {channel} carries {expected!r} messages, got {kind!r}")
    cls = _TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolError(f"unknown message type {kind!r}")
    message = _build(cls, obj)
    check_message(message)
    return schema, message


def check_message(message: Message) -> None:
    """Refuse values that are well-typed but impossible (negative sizes, bad hashes...)."""
    if isinstance(message, Command):
        _check_command(message)
    elif isinstance(message, ChunkRequest):
        if not _SHA256.match(message.transfer_id):
            raise ProtocolError("transfer_id must be the artifact's SHA-256 (64 hex digits)")
        if not message.indices or len(message.indices) > MAX_INDICES:
            raise ProtocolError(f"a chunk request asks for 1 to {MAX_INDICES} chunks")
        if any(not 0 <= i <= MAX_COUNT for i in message.indices):
            raise ProtocolError(f"chunk indices must be in 0..{MAX_COUNT}")
        if message.via not in VIAS:
            raise ProtocolError(f"chunk-req via must be one of {VIAS}, got {message.via!r}")
    elif isinstance(message, Telemetry):
        _check_telemetry(message)
    elif isinstance(message, Feedback):
        _check_feedback(message)
    elif isinstance(message, Ack):
        if not message.command_id or len(message.command_id) > 128:
            raise ProtocolError("command_id must be 1-128 characters")
        if message.action not in ACTIONS:
            raise ProtocolError(f"unknown action {message.action!r}; expected one of {ACTIONS}")
    elif isinstance(message, Heartbeat):
        _check_seconds("uptime_s", message.uptime_s)
    _check_common(message)


def _check_common(message: Message) -> None:
    """Ids in range; a device's region well-formed."""
    if isinstance(message, Status | Telemetry) and message.region is not None:
        check_region(message.region)
    for name in ("model_version_id", "rollout_id"):
        value = getattr(message, name, None)
        if value is not None and not 0 <= value <= MAX_ID:
            raise ProtocolError(f"{name} must be in 0..{MAX_ID}")


_ENVELOPE_FIELDS = ("issued_at", "expires_at", "signature")
MAX_MILLIS = 2**53 - 1  # issued_at / expires_at: Unix milliseconds


def _check_command(message: Command) -> None:
    _check_envelope(message)
    if message.action not in ACTIONS:
        raise ProtocolError(f"unknown action {message.action!r}; expected one of {ACTIONS}")
    if not message.command_id or len(message.command_id) > 128:
        raise ProtocolError("command_id must be 1-128 characters")
    if len(message.telemetry_bins) > MAX_FEATURES or any(
        len(edges) >= MAX_BINS for edges in message.telemetry_bins
    ):
        raise ProtocolError(
            f"telemetry_bins holds at most {MAX_FEATURES} features of {MAX_BINS - 1} edges"
        )
    if message.action == "install" and message.artifact is None:
        raise ProtocolError("an install command needs an artifact")
    if message.artifact is not None:  # whatever the action: a present artifact is checked
        _check_artifact(message.artifact)


def _check_envelope(message: Command) -> None:
    times = (message.issued_at, message.expires_at)
    if message.signature is None:
        if any(t is not None for t in times):
            raise ProtocolError("issued_at and expires_at come only with a signature")
        return
    if len(message.signature) > 128:
        raise ProtocolError("signature must be base64 of 64 bytes")
    if any(t is None or not 0 <= t <= MAX_MILLIS for t in times):
        raise ProtocolError(f"a signed command needs issued_at and expires_at in 0..{MAX_MILLIS}")


def _check_telemetry(message: Telemetry) -> None:
    if not 0 <= message.seq <= MAX_COUNT or not 0 <= message.count <= MAX_COUNT:
        raise ProtocolError(f"telemetry seq and count must be in 0..{MAX_COUNT}")
    for name in ("window_s", "latency_p50_ms", "latency_p95_ms"):
        _check_seconds(name, getattr(message, name))
    if len(message.predictions) > MAX_CLASSES or any(
        len(k) > 64 or not 0 <= v <= MAX_COUNT for k, v in message.predictions.items()
    ):
        raise ProtocolError(
            f"predictions: at most {MAX_CLASSES} classes (names <= 64 characters), "
            f"counts in 0..{MAX_COUNT}"
        )
    if not 0 <= message.errors <= MAX_COUNT:
        raise ProtocolError(f"telemetry errors must be in 0..{MAX_COUNT}")
    if len(message.features) > MAX_FEATURES or any(
        len(f.counts) > MAX_BINS for f in message.features
    ):
        raise ProtocolError(f"features: at most {MAX_FEATURES} features of {MAX_BINS} bins")
    if any(not 0 <= c <= MAX_COUNT for f in message.features for c in f.counts):
        raise ProtocolError(f"feature bin counts must be in 0..{MAX_COUNT}")
    if message.battery is not None:
        _check_battery(message.battery)


def check_region(region: str) -> None:
    """Refuse a grid region that is not 1-32 letters, digits, '-' or '_'."""
    if not isinstance(region, str) or not _REGION.match(region):
        raise ProtocolError(
            "region must be 1-32 letters, digits, '-' or '_' (a grid region: DE, US-CAL-CISO)"
        )


def _check_battery(battery: Battery) -> None:
    if not 0.0 <= battery.level <= 1.0:  # also refuses NaN
        raise ProtocolError(
            f"telemetry battery level must be in [0, 1] (state of charge), got {battery.level!r}"
        )


def _check_feedback(message: Feedback) -> None:
    if not 0 <= message.seq <= MAX_COUNT:
        raise ProtocolError(f"feedback seq must be in 0..{MAX_COUNT}")
    _check_seconds("window_s", message.window_s)
    if len(message.labels) > MAX_CLASSES or any(
        len(k) > 64 or not (0 <= v.correct <= MAX_COUNT and 0 <= v.wrong <= MAX_COUNT)
        for k, v in message.labels.items()
    ):
        raise ProtocolError(
            f"labels: at most {MAX_CLASSES} classes (names <= 64 characters), "
            f"correct and wrong in 0..{MAX_COUNT}"
        )


def _check_seconds(name: str, value: float) -> None:
    if not 0 <= value <= MAX_SECONDS:  # also refuses NaN
        raise ProtocolError(f"{name} must be in 0..{MAX_SECONDS:g}")


def _check_artifact(ref: ArtifactRef) -> None:
    if not _SHA256.match(ref.sha256) or not all(_SHA256.match(h) for h in ref.chunk_sha256):
        raise ProtocolError("artifact hashes must be SHA-256 as 64 lower-case hex digits")
    if not 0 < ref.chunk_size <= MAX_CHUNK_BYTES:
        raise ProtocolError(f"chunk_size must be in 1..{MAX_CHUNK_BYTES}")
    if ref.size <= 0 or ref.chunks != -(-ref.size // ref.chunk_size):
        raise ProtocolError("artifact size, chunk_size and the number of chunk hashes disagree")


# --- chunks ---------------------------------------------------------------------------


def encode_chunk(chunk: Chunk) -> bytes:
    """Binary chunk frame: magic, header length, JSON header, data."""
    if len(chunk.data) > MAX_CHUNK_BYTES:
        raise ValueError(f"chunk of {len(chunk.data)} bytes exceeds {MAX_CHUNK_BYTES}")
    header = json.dumps(
        {"schema": CHUNK_SCHEMA, "transfer_id": chunk.transfer_id, "index": chunk.index},
        separators=(",", ":"),
    ).encode("utf-8")
    return CHUNK_MAGIC + struct.pack(">H", len(header)) + header + chunk.data


def decode_chunk(frame: bytes) -> Chunk:
    """Parse a chunk frame; raise ProtocolError for anything malformed."""
    if len(frame) < 6 or frame[:4] != CHUNK_MAGIC:
        raise ProtocolError("not a fedfleet chunk frame (bad magic)")
    (length,) = struct.unpack(">H", frame[4:6])
    if 6 + length > len(frame):
        raise ProtocolError("chunk frame header is truncated")
    try:
        header = json.loads(
            frame[6 : 6 + length].decode("utf-8"),
            parse_constant=_refuse_constant,
            parse_int=_bounded_int,
            parse_float=_finite_float,
        )
    except (UnicodeDecodeError, ValueError) as err:
        raise ProtocolError(f"chunk header is malformed JSON: {str(err)[:200]}") from None
    except RecursionError:
        raise ProtocolError("chunk header nested too deeply") from None
    if not isinstance(header, dict) or header.get("schema") != CHUNK_SCHEMA:
        raise ProtocolError("chunk header has an unknown schema version")
    if set(header) != {"schema", "transfer_id", "index"}:
        raise ProtocolError("chunk header holds exactly schema, transfer_id and index")
    transfer_id, index = header.get("transfer_id"), header.get("index")
    if not isinstance(transfer_id, str) or not _SHA256.match(transfer_id):
        raise ProtocolError("chunk transfer_id must be a SHA-256")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index <= MAX_COUNT:
        raise ProtocolError(f"chunk index must be an integer in 0..{MAX_COUNT}")
    data = frame[6 + length :]
    if len(data) > MAX_CHUNK_BYTES:
        raise ProtocolError("chunk is too large")
    return Chunk(transfer_id=transfer_id, index=index, data=data)


# --- strict construction from JSON ----------------------------------------------------


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _bounded_int(text: str) -> int:
    """An integer literal of at most MAX_INT_DIGITS digits (a 400-digit number is refused
    here, before it can overflow a float or a database column)."""
    # The length alone first: called for every integer of every message the fleet reads.
    if len(text) > MAX_INT_DIGITS and len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(text)} digits (at most {MAX_INT_DIGITS})")
    return int(text)


def _finite_float(text: str) -> float:
    value = float(text)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_num(value: Any) -> bool:
    return (isinstance(value, (int, float))) and not isinstance(value, bool)


@functools.cache
def _field_checks(cls: Any) -> dict[str, Any]:
    """Each field of ``cls`` and its converter's kind (built once per class: every
    message decoded asks, and the fleet decodes thousands a second)."""
    ann = {
        Status: {
            "online": bool,
            "model_version_id": "opt_int",
            "model_version": "opt_str",
            "sha256": "opt_str",
            "slot": "opt_str",
            "target": "opt_str",
            "agent": str,
            "region": "region",
            "type": str,
        },
        Heartbeat: {"uptime_s": "num", "model_version_id": "opt_int", "type": str},
        Telemetry: {
            "seq": "int",
            "window_s": "num",
            "count": "int",
            "latency_p50_ms": "num",
            "latency_p95_ms": "num",
            "model_version_id": "opt_int",
            "predictions": "counts",
            "features": "features",
            "errors": "int",
            "battery": "battery",
            "region": "region",
            "type": str,
        },
        Feedback: {
            "seq": "int",
            "window_s": "num",
            "model_version_id": "opt_int",
            "labels": "labels",
            "type": str,
        },
        Command: {
            "command_id": str,
            "action": str,
            "rollout_id": "opt_int",
            "model_version_id": "opt_int",
            "artifact": "artifact",
            "telemetry_bins": "bins",
            "issued_at": "opt_int",
            "expires_at": "opt_int",
            "signature": "opt_str",
            "type": str,
        },
        Ack: {
            "command_id": str,
            "ok": bool,
            "action": str,
            "rollout_id": "opt_int",
            "model_version_id": "opt_int",
            "error": "text",
            "stage": "text",
            "type": str,
        },
        ChunkRequest: {"transfer_id": str, "indices": "int_list", "via": str, "type": str},
    }
    return ann[cls]


@functools.cache
def _required(cls: Any) -> frozenset[str]:
    """The fields of ``cls`` a message must carry (those without a default)."""
    defaults = {f for f, v in cls.__dataclass_fields__.items() if _has_default(v)}
    return frozenset(set(_field_checks(cls)) - defaults)


def _build(cls: Any, obj: dict[str, Any]) -> Any:
    checks = _field_checks(cls)
    unknown = obj.keys() - checks.keys()
    if unknown:
        raise ProtocolError(f"{obj.get('type')} message has unknown fields {sorted(unknown)}")
    missing = _required(cls) - obj.keys()
    if missing:
        raise ProtocolError(f"{obj.get('type')} message lacks fields {sorted(missing)}")
    converters = _field_converters(cls)
    return cls(**{name: converters[name](name, value) for name, value in obj.items()})


@functools.cache
def _field_converters(cls: Any) -> dict[str, Callable[[str, Any], Any]]:
    """Each field's converter function, looked up once per class (not once per field of
    every message: the fleet decodes a rollout's thousands of acks in a burst)."""
    return {name: _CONVERTERS[kind] for name, kind in _field_checks(cls).items()}


def _has_default(f: Any) -> bool:
    from dataclasses import MISSING

    return f.default is not MISSING or f.default_factory is not MISSING


def _wrong_type(name: str, value: Any) -> ProtocolError:
    return ProtocolError(f"field {name!r} has the wrong type ({type(value).__name__})")


def _to_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _wrong_type(name, value)
    return value


def _to_str(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise _wrong_type(name, value)
    if len(value) > MAX_TEXT:
        raise ProtocolError(f"field {name!r} is longer than {MAX_TEXT} characters")
    return value


def _to_int(name: str, value: Any) -> int:
    if not _is_int(value):
        raise _wrong_type(name, value)
    return value


def _to_num(name: str, value: Any) -> float:
    if not _is_num(value):
        raise _wrong_type(name, value)
    return float(value)


def _to_opt_int(name: str, value: Any) -> int | None:
    if value is not None and not _is_int(value):
        raise _wrong_type(name, value)
    return value


def _to_opt_str(name: str, value: Any) -> str | None:
    return None if value is None else _to_str(name, value)


def _to_text(name: str, value: Any) -> str:
    """A string that may be sent as ``null`` (the same as ``""``: an ack's error/stage)."""
    return "" if value is None else _to_str(name, value)


def _to_int_list(name: str, value: Any) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(_is_int(v) for v in value):
        raise _wrong_type(name, value)
    return tuple(value)


def _to_counts(name: str, value: Any) -> dict[str, int]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and _is_int(v) and v >= 0 for k, v in value.items()
    ):
        raise _wrong_type(name, value)
    return dict(value)


def _to_labels(name: str, value: Any) -> dict[str, LabelCount]:
    if not isinstance(value, dict):
        raise _wrong_type(name, value)
    out = {}
    for key, item in value.items():
        if (
            not isinstance(item, dict)
            or set(item) != {"correct", "wrong"}
            or not all(_is_int(v) for v in item.values())
        ):
            raise _wrong_type(name, value)
        out[key] = LabelCount(correct=item["correct"], wrong=item["wrong"])
    return out


def _to_features(name: str, value: Any) -> tuple[FeatureSummary, ...]:
    if not isinstance(value, list):
        raise _wrong_type(name, value)
    out = []
    for item in value:
        if not isinstance(item, dict) or set(item) != {"counts"}:
            raise _wrong_type(name, value)
        counts = item["counts"]
        # type() is int: what _is_int says of a value json.loads made (never a subclass
        # but bool), at a third of its cost; a telemetry message carries dozens of these.
        if not isinstance(counts, list) or not all(type(c) is int for c in counts):
            raise _wrong_type(name, value)
        out.append(FeatureSummary(counts=tuple(counts)))
    return tuple(out)


def _to_bins(name: str, value: Any) -> tuple[tuple[float, ...], ...]:
    if not isinstance(value, list) or not all(
        isinstance(row, list) and all(_is_num(v) for v in row) for row in value
    ):
        raise _wrong_type(name, value)
    return tuple(tuple(float(v) for v in row) for row in value)


def _to_region(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise _wrong_type(name, value)
    return value  # the pattern is checked by check_message


def _to_battery(name: str, value: Any) -> Battery:
    if (
        not isinstance(value, dict)
        or set(value) != {"level", "charging"}
        or not _is_num(value["level"])
        or not isinstance(value["charging"], bool)
    ):
        raise _wrong_type(name, value)
    return Battery(level=float(value["level"]), charging=value["charging"])


def _to_artifact(name: str, value: Any) -> ArtifactRef | None:
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != {
        "sha256",
        "size",
        "chunk_size",
        "chunk_sha256",
    }:
        raise ProtocolError("artifact must hold exactly sha256, size, chunk_size, chunk_sha256")
    hashes = value["chunk_sha256"]
    if (
        not isinstance(value["sha256"], str)
        or not _is_int(value["size"])
        or not _is_int(value["chunk_size"])
        or not isinstance(hashes, list)
        or not all(isinstance(h, str) for h in hashes)
    ):
        raise _wrong_type(name, value)
    return ArtifactRef(
        sha256=value["sha256"],
        size=value["size"],
        chunk_size=value["chunk_size"],
        chunk_sha256=tuple(hashes),
    )


# Field kind (as named in ``_field_checks``) -> its converter: the JSON value checked
# and turned into the dataclass field's type, or a ProtocolError naming the field.
_CONVERTERS: dict[Any, Callable[[str, Any], Any]] = {
    bool: _to_bool,
    str: _to_str,
    "int": _to_int,
    "num": _to_num,
    "opt_int": _to_opt_int,
    "opt_str": _to_opt_str,
    "text": _to_text,
    "int_list": _to_int_list,
    "counts": _to_counts,
    "features": _to_features,
    "bins": _to_bins,
    "artifact": _to_artifact,
    "labels": _to_labels,
    "battery": _to_battery,
    "region": _to_region,
}
