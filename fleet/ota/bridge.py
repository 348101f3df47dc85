"""The fleet's MQTT side: ingest what devices say, send commands, serve artifact chunks.

Three threads, none of them paho's callback (which only enqueues):

- the **chunk server** answers ``chunk-req`` messages from an in-memory cache of the
  artifact files (a few bundles; a chunk request never touches the database): requests
  ``via="device"`` (the repair path) at once on the device's own topic, requests
  ``via="artifact"`` gathered across devices and published once on the shared
  artifact topic (:mod:`fleet.ota.fanout` decides when);
- the **ingester** drains status, heartbeat, telemetry and ack messages in batches (up
  to ``batch_max`` messages or ``batch_wait_s`` seconds) and writes each batch in one
  transaction: one UPDATE per kind for devices, telemetry in bulk (one COPY on PostgreSQL:
  :mod:`fleet.ota.telemetry_rows`),
  rollout-device states for acks;
- the caller's thread sends commands (:meth:`FleetBridge.send_command`).

The paho client is driven by a :class:`~edge_client.mqtt_loop.SharedLoop` (epoll), not
``loop_start()``: paho's own thread waits in ``select()``, which cannot watch a socket
numbered above 1023, so in a process holding many connections (a simulator, a bench)
the fleet silently stopped receiving — 400 of 20,000 telemetry messages at 1,000
simulated devices.

One device never hurts the others: every message is decoded and validated on its own; a
malformed one, or one the database refuses, is dropped and counted (``stats.guard.poison``,
one log line naming the device) and takes no other message with it — a batch whose
transaction fails is written again one message at a time. Before anything is queued,
:class:`~fleet.ota.guard.DeviceGuard` applies per-device rate limits and caps the queues
(memory stays bounded). Each worker thread logs an unexpected exception with its
traceback and carries on. The wire contract is :mod:`edge_client.protocol.mqtt`.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import queue
import ssl
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine, String, any_, bindparam, update
from sqlalchemy import select as sa_select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlmodel import col, select

from edge_client.mqtt_loop import SharedLoop
from edge_client.protocol import mqtt as proto
from fleet import audit
from fleet.artifacts import ArtifactStore
from fleet.db import KeyedUpdate, session_scope
from fleet.models.common import utcnow
from fleet.models.devices import Device, ReportedStatus
from fleet.models.ota import DeviceRolloutState, RolloutDevice
from fleet.models.registry import ModelVersion
from fleet.ota.command_signing import DEFAULT_TTL_S, CommandSigner
from fleet.ota.fanout import FanoutPlanner
from fleet.ota.guard import CHUNKS, DeviceGuard, Limits
from fleet.ota.telemetry_rows import (
    feedback_row,
    insert_feedback,
    insert_telemetry,
    telemetry_row,
)

log = logging.getLogger(__name__)
#: QoS 1 messages in flight to the broker at most: below paho's 65,535 packet ids.
MAX_UNACKED = 32_768

_CACHE_ARTIFACTS = 4


@dataclass(frozen=True)
class BridgeSettings:
    """Broker connection of the fleet service and batching of the ingester.

    ``batch_max``: messages per database transaction; ``batch_wait_s``: longest wait
    before a partial batch is written; ``chunk_size``: artifact chunk size in bytes;
    ``fanout_quiet_s``/``fanout_max_wait_s``: how long shared chunk requests are gathered
    before one publication on the artifact topic (see :mod:`fleet.ota.fanout`);
    ``limits``: per-device rates and queue caps (:mod:`fleet.ota.guard`);
    ``command_key``: the Ed25519 private key every command is signed with
    (:mod:`fleet.ota.command_signing`; None: unsigned, and devices refuse rollbacks);
    ``command_ttl_s``: how long a signed command stays valid;
    ``v1_until``: the end of the protocol v1 migration window (Unix seconds): until then
    a device speaking v1 (``"schema": 1``) is served — its messages decoded, its commands
    sent as v1 and unsigned — and after it (or when None) its messages are refused with
    one log line naming the version (docs/device-protocol.md, Versioning);
    ``shared_group``: one of several bridges (replicas, docs/scale-out.md): device
    messages arrive over ``$share/GROUP/...`` (each to one member), the session persists
    (``client_id`` must be the replica's own and stable across restarts), and each QoS 1
    message is acknowledged only once written, telemetry and feedback deduplicated by
    their digests — a bridge killed mid-batch gets its unacknowledged messages again, none
    stored twice.
    """

    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    ca_file: Path | None = None
    client_id: str = "fedfleet-fleet"
    batch_max: int = 1000
    batch_wait_s: float = 0.2
    chunk_size: int = proto.DEFAULT_CHUNK_BYTES
    fanout_quiet_s: float = 0.1
    fanout_max_wait_s: float = 1.0
    limits: Limits = field(default_factory=Limits)
    command_key: Ed25519PrivateKey | None = None
    command_ttl_s: float = DEFAULT_TTL_S
    v1_until: float | None = None
    shared_group: str | None = None

    def __repr__(self) -> str:  # never print the password
        return f"BridgeSettings(host={self.host!r}, port={self.port}, user={self.username!r})"


@dataclass
class BridgeStats:
    """Counters since start (messages, not bytes)."""

    received: int = 0
    ignored: int = 0
    telemetry_rows: int = 0
    heartbeats: int = 0
    statuses: int = 0
    acks: int = 0
    chunks_served: int = 0  # frames published, on device and artifact topics
    chunks_shared: int = 0  # of which on the shared artifact topic
    batches: int = 0
    acks_seen: list[proto.Ack] = field(default_factory=list)
    # When (time.monotonic()) shared chunk requests arrived and shared publications
    # started, with the number of chunks published: the fan-out's timeline (benches).
    shared_requests_at: deque[float] = field(default_factory=lambda: deque(maxlen=100_000))
    shared_published: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=10_000))
    # Per-device throttled / dropped / poison counts (set by the bridge).
    guard: DeviceGuard = field(default_factory=lambda: DeviceGuard(Limits()))
    v1_refused: int = 0  # protocol v1 messages refused after the migration window
    thread_errors: int = 0  # unexpected exceptions a worker thread logged and survived


class FleetBridge:
    """The fleet service's MQTT client. ``start()``/``stop()``; thread-safe ``send_command``."""

    def __init__(self, *, engine: Engine, store: ArtifactStore, settings: BridgeSettings) -> None:
        if settings.batch_max < 1 or settings.batch_wait_s <= 0:
            raise ValueError("batch_max must be >= 1 and batch_wait_s > 0")
        self._fanout = FanoutPlanner(
            quiet_s=settings.fanout_quiet_s, max_wait_s=settings.fanout_max_wait_s
        )
        self._fanout_lock = threading.Lock()
        self._network = SharedLoop()
        self.engine = engine
        self.store = store
        self.settings = settings
        self._signer = (
            CommandSigner(settings.command_key, ttl_s=settings.command_ttl_s)
            if settings.command_key is not None
            else None
        )
        self.stats = BridgeStats(guard=DeviceGuard(settings.limits))
        self._guard = self.stats.guard
        self._ingest: queue.SimpleQueue[tuple[str, str, bytes, int]] = queue.SimpleQueue()
        self._shared = settings.shared_group is not None
        self._chunks: queue.SimpleQueue[tuple[str, bytes, float] | None] = queue.SimpleQueue()
        self._cache: OrderedDict[str, bytes] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._refs: dict[str, proto.ArtifactRef] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._connected = threading.Event()
        self._known: set[str] = set()
        self._models: set[int] = set()
        # Devices last heard speaking protocol v1 (their commands are encoded for v1).
        self._v1_devices: set[str] = set()
        # QoS 1 publishes not yet acknowledged by the broker, oldest first (see _publish).
        self._unacked: collections.deque[mqtt.MQTTMessageInfo] = collections.deque()
        self._unacked_lock = threading.Lock()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=settings.client_id,
            clean_session=not self._shared,
            protocol=mqtt.MQTTv311,
            manual_ack=self._shared,
        )
        if settings.username is not None:
            self.client.username_pw_set(settings.username, settings.password)
        if settings.ca_file is not None:
            self.client.tls_set(ca_certs=str(settings.ca_file), tls_version=ssl.PROTOCOL_TLS_CLIENT)
        self.client.max_inflight_messages_set(256)
        self.client.max_queued_messages_set(0)
        self.client.reconnect_delay_set(min_delay=1, max_delay=5)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message

    # --- life cycle -------------------------------------------------------------

    def start(self, *, wait_s: float = 10.0) -> FleetBridge:
        """Connect, subscribe, start the worker threads; wait until connected."""
        self._network.start()
        self._network.add(
            self.client, host=self.settings.host, port=self.settings.port, keepalive=30
        )
        for one_pass, name in ((self._chunk_pass, "chunks"), (self._ingest_pass, "ingest")):
            thread = threading.Thread(
                target=self._guarded, args=(name, one_pass), name=f"bridge-{name}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        if not self._connected.wait(wait_s):
            self.stop()
            raise ConnectionError(
                f"the fleet could not connect to the broker at {self.settings.host}:"
                f"{self.settings.port} within {wait_s} s; check the address and credentials"
            )
        return self

    def stop(self) -> None:
        """Disconnect, then write every message received so far and join the threads.

        In that order: once the network loop has stopped nothing more is received, so
        the ingester's last batch holds everything the broker handed over (paho
        acknowledges a QoS 1 message when its callback has queued it)."""
        self._network.remove(self.client)
        self.client.disconnect()
        time.sleep(0.05)  # let the loop write the DISCONNECT
        self._network.stop()
        self._stop.set()
        self._chunks.put(None)
        for thread in self._threads:
            thread.join(timeout=10)

    def __enter__(self) -> FleetBridge:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # --- paho callbacks: enqueue only -------------------------------------------

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            log.error("broker refused the fleet: %s", reason)
            return
        prefix = f"$share/{self.settings.shared_group}/" if self._shared else ""
        client.subscribe([(prefix + proto.uplink_filter(c), proto.QOS) for c in proto.UPLINK])
        self._connected.set()

    def _on_disconnect(self, *_args: Any) -> None:
        self._connected.clear()

    def _on_message(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        # Cheap checks only (this is the network thread): who sent it, may it be queued.
        parts = message.topic.split("/")
        device_id, channel = (parts[3], parts[4]) if len(parts) == 5 else ("", "")
        size = len(message.payload)
        if not self._guard.admit(device_id, channel, size=size):
            self._ack(message.mid, message.qos)
            return
        if size > proto.MAX_JSON_BYTES:  # refused unread: never copied nor queued
            self._ack(message.mid, message.qos)
            self._guard.taken(device_id, channel)
            self.stats.received += 1
            self.stats.ignored += 1
            self._guard.poisoned(device_id, message.topic, f"{size} bytes (limit 1 MiB)")
            return
        payload = bytes(message.payload)
        if channel == CHUNKS:  # nothing stored: acknowledged at once
            self._ack(message.mid, message.qos)
            self._chunks.put((message.topic, payload, time.monotonic()))
        else:  # acknowledged once written (shared_group; else paho did already)
            self._ingest.put(("msg", message.topic, payload, message.mid if message.qos else 0))

    def _ack(self, mid: int, qos: int) -> None:
        """Acknowledge a QoS 1 message (with ``shared_group`` only: else paho has)."""
        if self._shared and qos:
            self.client.ack(mid, qos)

    @property
    def alive(self) -> bool:
        """Whether every worker thread runs (a health check; tests)."""
        return bool(self._threads) and all(t.is_alive() for t in self._threads)

    def _guarded(self, name: str, one_pass: Any) -> None:
        """Run ``one_pass()`` until it returns True (stop); an unexpected exception is
        logged with its traceback and the loop carries on: no payload ends a thread."""
        while True:
            try:
                if one_pass():
                    return
            except Exception:
                self.stats.thread_errors += 1
                log.exception("bridge %s: unexpected error; carrying on", name)
                time.sleep(0.01)  # never a hot loop on a persistent failure

    # --- commands ---------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def send_command(self, device_id: str, command: proto.Command) -> None:
        """Publish ``command`` to the device (QoS 1; the broker queues it while offline)."""
        self.send_commands([(device_id, command)])

    def send_commands(self, commands: Iterable[tuple[str, proto.Command]]) -> None:
        """Publish each ``(device_id, command)`` to its device, in order, in one tight loop
        (a wave's installs): every message is still one device's own command."""
        frames = [
            (device_id, command, self._encode_command(device_id, command))
            for device_id, command in commands
        ]
        now = time.monotonic()
        with self._fanout_lock:  # once for the wave, not once per device
            for device_id, command, _frame in frames:
                if command.action == "install" and command.artifact is not None:
                    self._fanout.expect(command.artifact.sha256, device_id, now=now)
        for device_id, _command, frame in frames:
            self._publish(proto.topic(device_id, "cmd"), frame)

    def _publish(self, topic: str, frame: bytes) -> None:
        """Publish at QoS 1 with at most ``MAX_UNACKED`` messages the broker has not yet
        acknowledged. paho numbers them with 16-bit packet ids and keys the pending ones by
        id, so a 65,536th pending message would silently replace the first (a 100,000-device
        wave reached exactly 65,535 devices). Past the window this waits for the oldest,
        saying so once a minute; a stopping bridge stops waiting."""
        with self._unacked_lock:
            while self._unacked and self._unacked[0].is_published():
                self._unacked.popleft()
            since = time.monotonic()
            said = since
            while len(self._unacked) >= MAX_UNACKED and not self._stop.wait(0.02):
                while self._unacked and self._unacked[0].is_published():
                    self._unacked.popleft()
                if time.monotonic() - said >= 60.0:
                    said = time.monotonic()
                    log.warning(
                        "fleet mqtt: %d messages wait for the broker's acknowledgement "
                        "(%.0f s); is the broker reachable?",
                        len(self._unacked),
                        said - since,
                    )
            self._unacked.append(self.client.publish(topic, frame, qos=proto.QOS))

    def _encode_command(self, device_id: str, command: proto.Command) -> bytes:
        """The command as the device's protocol version reads it: v2 signed (with a
        command key), or — for a v1 device inside the migration window — v1, unsigned."""
        if device_id in self._v1_devices and self.v1_accepted():
            return proto.encode(command, schema=proto.V1_SCHEMA)
        signer = self._signer
        return proto.encode(signer.sign(device_id, command) if signer else command)

    def v1_accepted(self, now: float | None = None) -> bool:
        """Whether protocol v1 devices are still served (the migration window is open)."""
        until = self.settings.v1_until
        return until is not None and (time.time() if now is None else now) < until

    def _decode_device(self, device_id: str, topic_name: str, payload: bytes, channel: Any) -> Any:
        """Decode a device message of v2, or of v1 while the window is open (the device is
        then remembered as v1); a v1 message after the window raises VersionRefused."""
        accept = proto.KNOWN_SCHEMAS if self.v1_accepted() else (proto.SCHEMA_VERSION,)
        try:
            schema, message = proto.decode_versioned(payload, channel=channel, accept=accept)
        except proto.VersionRefused as err:
            self.stats.v1_refused += 1
            self._guard.refused_version(device_id, topic_name, str(err))
            raise
        if schema == proto.V1_SCHEMA:
            self._v1_devices.add(device_id)
        else:
            self._v1_devices.discard(device_id)
        return message

    def artifact_ref(self, sha256: str) -> proto.ArtifactRef:
        """Size, chunking and per-chunk hashes of a stored artifact (cached)."""
        ref = self._refs.get(sha256)
        if ref is None:
            data = self._artifact_bytes(sha256)
            size = self.settings.chunk_size
            hashes = tuple(
                hashlib.sha256(data[i : i + size]).hexdigest() for i in range(0, len(data), size)
            )
            ref = proto.ArtifactRef(
                sha256=sha256, size=len(data), chunk_size=size, chunk_sha256=hashes
            )
            self._refs[sha256] = ref
        return ref

    def _artifact_bytes(self, sha256: str) -> bytes:
        with self._cache_lock:
            data = self._cache.get(sha256)
            if data is not None:
                self._cache.move_to_end(sha256)
                return data
        data = Path(self.store.path_for(sha256)).read_bytes()
        if hashlib.sha256(data).hexdigest() != sha256:
            raise ValueError(f"artifact file {sha256[:12]} is damaged on the fleet's disk")
        with self._cache_lock:
            self._cache[sha256] = data
            while len(self._cache) > _CACHE_ARTIFACTS:
                self._cache.popitem(last=False)
        return data

    # --- chunk server -----------------------------------------------------------

    def _chunk_pass(self) -> bool:
        """Serve what is queued and what is due; True once stopped and drained."""
        with self._fanout_lock:
            wait = self._fanout.next_due_in(now=time.monotonic())
        try:
            item = self._chunks.get(timeout=wait) if wait is None or wait > 0 else None
        except queue.Empty:
            item = None
        backlog = [item] if item is not None else []
        stopping = item is None and self._stop.is_set()
        # Coalesce the backlog: under load, devices ask again for chunks still queued
        # here; serving each (device, transfer, chunk) once keeps the load bounded.
        while len(backlog) < 10_000:
            try:
                entry = self._chunks.get_nowait()
            except queue.Empty:
                break
            if entry is None:
                stopping = True
                break
            backlog.append(entry)
        wanted: dict[tuple[str, str], set[int]] = {}
        now = time.monotonic()
        for entry in backlog:
            if entry is None:
                continue
            parsed = self._parse_request(entry[0], entry[1])
            if parsed is None:
                continue
            device_id, request = parsed
            if request.via == "artifact":
                self.stats.shared_requests_at.append(entry[2])
                with self._fanout_lock:
                    self._fanout.join(request.transfer_id, device_id, request.indices, now=now)
            else:
                wanted.setdefault((device_id, request.transfer_id), set()).update(request.indices)
        for (device_id, transfer_id), indices in wanted.items():
            try:
                self._serve(proto.topic(device_id, "chunk"), transfer_id, sorted(indices))
            except Exception:  # a bad request must never stop the server
                log.exception("serving chunks to %s failed", device_id)
        with self._fanout_lock:
            due = self._fanout.due(now=time.monotonic())
        for transfer_id, shared in due:
            self.stats.shared_published.append((time.monotonic(), len(shared)))
            try:
                self._serve(proto.artifact_topic(transfer_id), transfer_id, shared)
            except Exception:
                log.exception("publishing chunks of %s failed", transfer_id[:12])
        return stopping or (item is None and self._stop.is_set())

    def _parse_request(
        self, topic_name: str, payload: bytes
    ) -> tuple[str, proto.ChunkRequest] | None:
        self.stats.received += 1
        parts = topic_name.split("/")
        self._guard.taken(parts[3] if len(parts) == 5 else "", CHUNKS)
        try:
            device_id, _channel = proto.parse_topic(topic_name)
        except proto.ProtocolError as err:
            self.stats.ignored += 1
            log.warning("ignored a chunk request on %s: %s", topic_name, err)
            return None
        try:
            request = self._decode_device(device_id, topic_name, payload, "chunk-req")
        except proto.VersionRefused:
            self.stats.ignored += 1
            return None
        except proto.ProtocolError as err:
            self.stats.ignored += 1
            self._guard.poisoned(device_id, topic_name, str(err))
            return None
        if not isinstance(request, proto.ChunkRequest):  # pragma: no cover - by channel
            return None
        return device_id, request

    def _serve(self, out_topic: str, transfer_id: str, indices: list[int]) -> None:
        try:
            data = self._artifact_bytes(transfer_id)
        except (FileNotFoundError, ValueError) as err:
            self.stats.ignored += 1
            log.warning("request on %s for unknown artifact %s: %s", out_topic, transfer_id, err)
            return
        size = self.settings.chunk_size
        shared = proto.parse_artifact_topic(out_topic) is not None
        for index in indices:
            start = index * size
            if start >= len(data):
                continue
            frame = proto.encode_chunk(
                proto.Chunk(transfer_id=transfer_id, index=index, data=data[start : start + size])
            )
            self._publish(out_topic, frame)
            self.stats.chunks_served += 1
            self.stats.chunks_shared += shared

    # --- ingestion --------------------------------------------------------------

    def _ingest_pass(self) -> bool:
        """Gather one batch and write it; True once stopped and drained."""
        if self._stop.is_set() and self._ingest.empty():
            return True
        batch: list[tuple[str, str, bytes, int]] = []
        deadline = time.monotonic() + self.settings.batch_wait_s
        while len(batch) < self.settings.batch_max:
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                break
            try:
                batch.append(self._ingest.get(timeout=timeout))
            except queue.Empty:
                break
        for _kind, topic_name, _payload, _mid in batch:
            parts = topic_name.split("/")
            self._guard.taken(parts[3] if len(parts) == 5 else "", "")
        if batch:
            self.ingest_batch([(kind, name, payload) for kind, name, payload, _ in batch])
            for *_message, mid in batch:  # written (or dropped as poison): acknowledge
                self._ack(mid, proto.QOS if mid else 0)
        return False

    def flush(self, timeout_s: float = 10.0) -> None:
        """Wait until everything received so far has been written (tests, shutdown)."""
        deadline = time.monotonic() + timeout_s
        while not self._ingest.empty() and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(self.settings.batch_wait_s * 2)

    def ingest_batch(self, batch: list[tuple[str, str, bytes]]) -> None:
        """Decode each device message on its own and write the batch in one transaction;
        if that transaction fails, write each message in its own, so a message the
        database refuses is dropped and counted alone (poison), never the batch."""
        decoded: list[tuple[str, str, proto.Message]] = []
        for _kind, topic_name, payload in batch:
            message = self._decode(topic_name, payload)
            if message is not None:
                decoded.append(message)
        if not decoded:
            return
        try:
            self._write(decoded)
        except Exception as err:
            log.warning(
                "a batch of %d device messages was refused (%s); writing each on its own",
                len(decoded),
                str(err).splitlines()[0][:200],
            )
            for item in decoded:
                try:
                    self._write([item])
                except Exception as one:
                    self.stats.ignored += 1
                    self._guard.poisoned(item[0], item[1], str(one).splitlines()[0][:200])

    def _decode(self, topic_name: str, payload: bytes) -> tuple[str, str, proto.Message] | None:
        """``(device_id, topic, message)``, or None for a message dropped (and counted)."""
        self.stats.received += 1
        try:
            device_id, channel = proto.parse_topic(topic_name)
        except proto.ProtocolError as err:
            self.stats.ignored += 1
            log.warning("ignored a message on %s: %s", topic_name, err)
            return None
        try:
            message = self._decode_device(device_id, topic_name, payload, channel)
        except proto.VersionRefused:
            self.stats.ignored += 1
            return None
        except proto.ProtocolError as err:
            reason = str(err)
        except Exception as err:  # decode raises only ProtocolError; never trust that here
            log.exception("decoding a message on %s raised", topic_name)
            reason = f"{type(err).__name__}: {err}"
        else:
            return device_id, topic_name, message
        self.stats.ignored += 1
        self._guard.poisoned(device_id, topic_name, reason)
        return None

    def _write(self, decoded: list[tuple[str, str, proto.Message]]) -> None:
        """Write decoded messages in one transaction (device rows, telemetry, acks)."""
        now = utcnow()
        seen: set[str] = set()
        offline: set[str] = set()
        versions: dict[str, int | None] = {}
        telemetry: list[dict[str, Any]] = []
        feedback: list[dict[str, Any]] = []
        acks: list[tuple[str, proto.Ack]] = []
        power: dict[str, dict[str, Any]] = {}  # device -> latest battery/region it reported
        counts = {"statuses": 0, "heartbeats": 0, "acks": 0}
        for device_id, _topic, message in decoded:
            _note_power(power, device_id, message)
            if isinstance(message, proto.Status):
                counts["statuses"] += 1
                if message.online:
                    seen.add(device_id)
                    offline.discard(device_id)
                    versions[device_id] = message.model_version_id
                else:
                    offline.add(device_id)
                    seen.discard(device_id)
            elif isinstance(message, proto.Heartbeat):
                counts["heartbeats"] += 1
                seen.add(device_id)
                offline.discard(device_id)
            elif isinstance(message, proto.Telemetry):
                seen.add(device_id)
                telemetry.append(telemetry_row(device_id, message, now, dedupe=self._shared))
            elif isinstance(message, proto.Feedback):
                seen.add(device_id)
                if message.model_version_id is not None:  # null: unknown, not stored
                    feedback.append(feedback_row(device_id, message, now, dedupe=self._shared))
            elif isinstance(message, proto.Ack):
                counts["acks"] += 1
                acks.append((device_id, message))
                versions[device_id] = message.model_version_id
                seen.add(device_id)
                offline.discard(device_id)
        with (
            session_scope(self.engine, write=True) as session,
            audit.exempt(session, reason="device messages from the MQTT bridge"),
        ):
            known = self._known_devices(session, seen | offline | set(versions))
            models = self._known_models(session, {v for v in versions.values() if v})
            self._update_devices(session, seen & known, offline & known, now)
            running = [
                {"id": device_id, "model_version_id": version}
                for device_id, version in versions.items()
                if device_id in known and (version is None or version in models)
            ]
            if running:  # one executemany UPDATE by primary key (was one per device)
                _RUNNING.execute(session.connection(), running)  # see _ACKED
            _write_power(session, {d: v for d, v in power.items() if d in known})
            rows = [r for r in telemetry if r["device_id"] in known]
            insert_telemetry(session, rows)  # one COPY on PostgreSQL
            insert_feedback(session, [r for r in feedback if r["device_id"] in known])
            if acks:
                self._apply_acks(session, acks, now)
            session.flush()
        # Counted once written (a batch refused and written again is counted once).
        self.stats.statuses += counts["statuses"]
        self.stats.heartbeats += counts["heartbeats"]
        self.stats.acks += counts["acks"]
        self.stats.telemetry_rows += len(rows)
        for device_id, ack in acks:
            self.stats.acks_seen.append(ack)
            if ack.action == "install":
                with self._fanout_lock:
                    self._fanout.finished(device_id)
        self.stats.batches += 1

    @staticmethod
    def _update_devices(session: Any, online: set[str], offline: set[str], now: Any) -> None:
        if online:
            session.execute(
                update(Device)
                .where(_one_of(session, Device.id, online), col(Device.retired_at).is_(None))
                .values(last_seen_at=now, reported_status=ReportedStatus.online)
                .execution_options(synchronize_session=False)
            )
        if offline:
            session.execute(
                update(Device)
                .where(_one_of(session, Device.id, offline))
                .values(reported_status=ReportedStatus.offline)
                .execution_options(synchronize_session=False)
            )

    def _known_devices(self, session: Any, ids: set[str]) -> set[str]:
        missing = ids - self._known
        if missing:
            found = session.exec(select(Device.id).where(col(Device.id).in_(sorted(missing))))
            self._known.update(found.all())
        return ids & self._known

    def _known_models(self, session: Any, ids: set[int]) -> set[int]:
        missing = ids - self._models
        if missing:
            found = session.exec(
                select(ModelVersion.id).where(col(ModelVersion.id).in_(sorted(missing)))
            )
            self._models.update(i for i in found.all() if i is not None)
        return ids & self._models

    @staticmethod
    def _apply_acks(session: Any, acks: list[tuple[str, proto.Ack]], now: Any) -> None:
        """Rollout-device states from a batch's acks: the rows in one query (a wave's
        thousand acks were a thousand SELECTs), applied in arrival order, and written in
        one UPDATE by primary key (they were one UPDATE statement each). The rows are
        read with Core into :class:`_AckRow`: building ORM objects was a third of it."""
        found = session.connection().execute(
            _ACK_ROWS.where(_one_of(session, _RD.c.command_id, {a.command_id for _, a in acks}))
        )
        rows = {(r[1], r[2]): _AckRow(r[0], r[1], r[3], r[4], r[5]) for r in found}
        changed: dict[tuple[int, str], _AckRow] = {}
        for device_id, ack in acks:
            row = rows.get((device_id, ack.command_id))
            # else: not (or no longer) a rollout's command
            if row is not None and FleetBridge._apply_ack(row, ack, now):
                changed[row.rollout_id, row.device_id] = row
        if changed:  # Core, not the ORM's bulk update: ~0.1 ms of Python per row less
            _ACKED.execute(
                session.connection(),
                [
                    {
                        "rollout_id": r.rollout_id,
                        "device_id": r.device_id,
                        "state": r.state,
                        "error": r.error,
                        "acked_at": r.acked_at,
                    }
                    for r in changed.values()
                ],
            )

    @staticmethod
    def _counts_late_success(row: _AckRow) -> bool:
        """A successful install acknowledged after the device was counted failed for not
        answering, or released: it runs the new model, and the rollout's row says so (after
        an abort that rolls back, the controller then sends it back too)."""
        if row.state is DeviceRolloutState.released:
            return True
        # Counted failed by the controller (never answered): no acknowledgement recorded.
        # Decided from what the fleet recorded, never from the error text a device sent.
        return row.state is DeviceRolloutState.failed and row.acked_at is None

    @staticmethod
    def _apply_ack(row: _AckRow, ack: proto.Ack, now: Any) -> bool:
        """Apply ``ack`` to the loaded ``row`` (the caller writes the changed rows in
        bulk); whether it changed."""
        state, error = row.state, row.error
        if ack.action == "install":
            if row.state is not DeviceRolloutState.sent and not (
                ack.ok and FleetBridge._counts_late_success(row)
            ):
                return False  # a duplicate, or a late failure of a device already counted
            state = DeviceRolloutState.installed if ack.ok else DeviceRolloutState.failed
            error = "" if ack.ok else f"{ack.stage}: {ack.error}"[:500]
        elif ack.action == "rollback":
            if ack.ok:
                state = DeviceRolloutState.rolled_back
            else:
                error = f"rollback failed: {ack.error}"[:500]
        row.state, row.error, row.acked_at = state, error, now
        return True


@dataclass(slots=True)
class _AckRow:
    """What an ack needs of its rollout-device row (read with Core, written in bulk)."""

    rollout_id: int
    device_id: str
    state: DeviceRolloutState
    error: str
    acked_at: datetime | None


_RD = RolloutDevice.__table__  # type: ignore[attr-defined]
_ACK_ROWS = sa_select(
    _RD.c.rollout_id, _RD.c.device_id, _RD.c.command_id, _RD.c.state, _RD.c.error, _RD.c.acked_at
)


# A batch's acknowledged rollout devices, one UPDATE by primary key (fleet.db.KeyedUpdate:
# an executemany on SQLite, one statement over arrays on PostgreSQL).
_ACKED = KeyedUpdate(
    RolloutDevice.__table__,  # type: ignore[attr-defined]
    ("rollout_id", "device_id"),
    ("state", "error", "acked_at"),
)
# The model version each device of a batch runs, the same way.
_RUNNING = KeyedUpdate(
    Device.__table__,  # type: ignore[attr-defined]
    ("id",),
    ("model_version_id",),
)


def _one_of(session: Any, column: Any, values: set[str]) -> Any:
    """``column IN values``; on PostgreSQL ``column = ANY(array)``, one parameter: a
    batch's thousand ids as a thousand placeholders cost psycopg more to convert than the
    statement costs to run (seen in the profiles, docs/scale-out.md)."""
    if session.get_bind().dialect.name == "postgresql":
        return column == any_(bindparam(None, sorted(values), type_=ARRAY(String)))
    return col(column).in_(sorted(values))


def _note_power(power: dict[str, dict[str, Any]], device_id: str, message: proto.Message) -> None:
    """Keep the latest battery and region a device's status or telemetry reports."""
    if not isinstance(message, proto.Status | proto.Telemetry):
        return
    latest = power.setdefault(device_id, {})
    if message.region is not None:
        latest["region"] = message.region
    if isinstance(message, proto.Telemetry) and message.battery is not None:
        latest["battery_level"] = message.battery.level
        latest["battery_charging"] = message.battery.charging


# The battery and region a batch's devices last reported: one KeyedUpdate per set of
# reported fields (a device may report a region and no battery), built once per set.
_POWER: dict[tuple[str, ...], KeyedUpdate] = {}


def _write_power(session: Any, power: dict[str, dict[str, Any]]) -> None:
    """One UPDATE by primary key per set of reported fields (as ``_RUNNING``)."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for device_id, fields in sorted(power.items()):
        if fields:
            groups.setdefault(tuple(sorted(fields)), []).append({"id": device_id, **fields})
    for columns, rows in groups.items():
        if columns not in _POWER:
            _POWER[columns] = KeyedUpdate(Device.__table__, ("id",), columns)  # type: ignore[attr-defined]
        _POWER[columns].execute(session.connection(), rows)
