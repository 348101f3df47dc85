"""The fleet's side of one device's session, as the conformance kit plays it.

:class:`FleetSide` connects to the broker as the fleet user, subscribes to the device's
uplink topics and records every message it receives after passing it through
:func:`~fleet.ota.conformance.validate.validate` (a message that fails is kept with its
reason: the kit reports it). paho's network thread only enqueues (callbacks never block);
the checks call :meth:`FleetSide.wait_for`, which handles the queued messages in the
calling thread — chunk requests are answered there, following the running
:class:`Transfer`'s faults (a tampered first delivery, a hold after N chunks) — until a
condition holds, the timeout passes or a stop is requested.
"""

from __future__ import annotations

import contextlib
import hashlib
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_client.protocol import mqtt as proto
from fleet.ota.command_signing import CommandSigner
from fleet.ota.conformance.validate import ProtocolError, validate


class CheckFailed(Exception):
    """A check's expectation did not hold; ``str(err)`` is the reason printed."""


class StopRequested(Exception):
    """SIGINT/SIGTERM arrived while the kit waited."""


@dataclass
class Seen:
    """One message the device sent: its channel, bytes, decoded form or refusal."""

    channel: str
    payload: bytes
    message: Any
    error: str | None
    at: float


@dataclass
class Transfer:
    """One bundle the kit serves, and what happened to it.

    ``tamper``: chunk indices whose first delivery has one byte flipped (later ones are
    correct); ``hold_after``: answer only that many chunk deliveries, then ignore requests
    until :meth:`release` (the transfer stalls mid-way)."""

    data: bytes
    chunk_size: int
    tamper: set[int] = field(default_factory=set)
    hold_after: int | None = None
    requests: list[tuple[tuple[int, ...], str, float]] = field(default_factory=list)
    delivered: list[int] = field(default_factory=list)
    tampered: list[int] = field(default_factory=list)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def chunks(self) -> int:
        return -(-len(self.data) // self.chunk_size)

    def ref(self) -> proto.ArtifactRef:
        parts = [self.chunk(i) for i in range(self.chunks)]
        return proto.ArtifactRef(
            sha256=self.sha256,
            size=len(self.data),
            chunk_size=self.chunk_size,
            chunk_sha256=tuple(hashlib.sha256(p).hexdigest() for p in parts),
        )

    def chunk(self, index: int) -> bytes:
        return self.data[index * self.chunk_size : (index + 1) * self.chunk_size]

    def release(self) -> None:
        self.hold_after = None

    def requested_since(self, since: float) -> set[int]:
        return {i for indices, _via, at in self.requests if at >= since for i in indices}


class FleetSide:
    """The fleet's MQTT session for device ``device_id`` (see the module doc)."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        username: str,
        password: str,
        device_id: str,
        command_key: Ed25519PrivateKey,
        stop: threading.Event | None = None,
    ) -> None:
        self.device_id = device_id
        self.host, self.port = host, port
        self.signer = CommandSigner(command_key, ttl_s=3600.0)
        self._stop = stop or threading.Event()
        self._inbox: queue.SimpleQueue[tuple[str, bytes]] = queue.SimpleQueue()
        self.seen: list[Seen] = []
        self.transfer: Transfer | None = None  # the latest install's
        self.offered: dict[str, Transfer] = {}  # every transfer offered, by SHA-256
        self.unknown_requests: list[str] = []  # requests for a transfer not being served
        self.sent: dict[str, bytes] = {}  # command id -> the bytes published
        # Asked at every step of a wait: a reason to give up at once (the agent exited).
        self.watch: Callable[[], str | None] = lambda: None
        self._ready = threading.Event()
        self._connect_error = ""
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=username,
            clean_session=True,
            protocol=mqtt.MQTTv311,
        )
        self.client.username_pw_set(username, password)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message

    # --- session ------------------------------------------------------------------

    def start(self, *, timeout_s: float) -> None:
        """Connect and subscribe; raise CheckFailed when the broker does not accept us."""
        try:
            self.client.connect(self.host, self.port, keepalive=30)
        except OSError as err:
            raise CheckFailed(
                f"cannot reach the broker at {self.host}:{self.port}: {err}"
            ) from None
        self.client.loop_start()
        if not self._ready.wait(timeout_s) or self._connect_error:
            reason = self._connect_error or f"no CONNACK within {timeout_s:g} s"
            raise CheckFailed(f"the broker refused the fleet user: {reason}")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            self._connect_error = str(reason)
        else:
            client.subscribe([(proto.topic(self.device_id, c), proto.QOS) for c in proto.UPLINK])
        self._ready.set()

    def _on_message(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        self._inbox.put((message.topic, bytes(message.payload)))

    # --- receiving ----------------------------------------------------------------

    def wait_for(self, condition: Callable[[], Any], *, timeout_s: float, what: str) -> Any:
        """Handle incoming messages until ``condition()`` is truthy (returned); raise
        CheckFailed naming ``what`` after ``timeout_s`` seconds."""
        deadline = time.monotonic() + timeout_s
        while True:
            result = condition()
            if result:
                return result
            if self._stop.is_set():
                raise StopRequested
            gone = self.watch()
            if gone:
                raise CheckFailed(f"{gone} while waiting for {what}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise CheckFailed(f"timed out after {timeout_s:g} s waiting for {what}")
            try:
                topic_name, payload = self._inbox.get(timeout=min(left, 0.1))
            except queue.Empty:
                continue
            self._handle(topic_name, payload)

    def pause(self, seconds: float) -> None:
        """Keep handling messages for ``seconds`` (nothing is awaited)."""
        with contextlib.suppress(CheckFailed):
            self.wait_for(lambda: False, timeout_s=seconds, what="nothing")

    def _handle(self, topic_name: str, payload: bytes) -> None:
        try:
            _device, channel = proto.parse_topic(topic_name)
        except ProtocolError as err:
            self.seen.append(Seen(topic_name, payload, None, str(err), time.monotonic()))
            return
        try:
            message: Any = validate(channel, payload)
            error = None
        except ProtocolError as err:
            message, error = None, str(err)
        self.seen.append(Seen(channel, payload, message, error, time.monotonic()))
        if isinstance(message, proto.ChunkRequest):
            self._serve(message)

    def messages(self, kind: type[Any], *, since: float = 0.0) -> list[Any]:
        """Valid messages of type ``kind`` received at or after ``since`` (monotonic)."""
        return [s.message for s in self.seen if isinstance(s.message, kind) and s.at >= since]

    def ack_for(self, command_id: str, *, since: float = 0.0) -> proto.Ack | None:
        """The last ack of ``command_id`` received at or after ``since``."""
        acks = [a for a in self.messages(proto.Ack, since=since) if a.command_id == command_id]
        return acks[-1] if acks else None

    def last_status(self, *, since: float = 0.0) -> proto.Status | None:
        found = self.messages(proto.Status, since=since)
        return found[-1] if found else None

    # --- chunks -------------------------------------------------------------------

    def _serve(self, request: proto.ChunkRequest) -> None:
        transfer = self.offered.get(request.transfer_id)
        if transfer is None:  # a transfer never offered to this device
            self.unknown_requests.append(request.transfer_id)
            return
        transfer.requests.append((request.indices, request.via, time.monotonic()))
        for index in request.indices:
            if index >= transfer.chunks:
                continue  # out of range: reported by the checks, never answered
            if transfer.hold_after is not None and len(transfer.delivered) >= transfer.hold_after:
                return
            data = transfer.chunk(index)
            if index in transfer.tamper and index not in transfer.tampered:
                transfer.tampered.append(index)
                data = bytes([data[0] ^ 0xFF]) + data[1:]
            else:
                transfer.delivered.append(index)
            frame = proto.encode_chunk(
                proto.Chunk(transfer_id=transfer.sha256, index=index, data=data)
            )
            where = (
                proto.artifact_topic(transfer.sha256)
                if request.via == "artifact"
                else proto.topic(self.device_id, "chunk")
            )
            self.client.publish(where, frame, qos=proto.QOS)

    # --- commands -----------------------------------------------------------------

    def send(self, command: proto.Command, *, sign: bool = True) -> proto.Command:
        """Publish ``command`` on the device's ``cmd`` topic, signed with the fleet's
        command key unless ``sign`` is False; return what was sent."""
        if sign:
            command = self.signer.sign(self.device_id, command)
        self.publish_raw(command.command_id, proto.encode(command))
        return command

    def send_forged(self, command: proto.Command, key: Ed25519PrivateKey) -> proto.Command:
        """Publish ``command`` signed with ``key`` (not the fleet's)."""
        forged = CommandSigner(key, ttl_s=3600.0).sign(self.device_id, command)
        self.publish_raw(forged.command_id, proto.encode(forged))
        return forged

    def publish_raw(self, command_id: str, payload: bytes) -> None:
        self.sent[command_id] = payload
        info = self.client.publish(proto.topic(self.device_id, "cmd"), payload, qos=proto.QOS)
        with contextlib.suppress(RuntimeError, ValueError):
            info.wait_for_publish(timeout=5.0)

    def install(self, transfer: Transfer, *, command_id: str, model_version_id: int) -> str:
        """Serve ``transfer`` and send the signed install command for it."""
        self.transfer = transfer
        self.offered.setdefault(transfer.sha256, transfer)
        self.send(
            proto.Command(
                command_id=command_id,
                action="install",
                rollout_id=1,
                model_version_id=model_version_id,
                artifact=transfer.ref(),
            )
        )
        return command_id

    def kick_device(self, password: str, *, timeout_s: float) -> None:
        """End the agent's connection: connect with the device's own credentials (the
        broker keeps one session per client id and closes the older one), then leave."""
        done = threading.Event()
        kicker = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.device_id,
            clean_session=False,
            protocol=mqtt.MQTTv311,
        )
        kicker.username_pw_set(self.device_id, password)
        kicker.on_connect = lambda *_a: done.set()
        try:
            kicker.connect(self.host, self.port, keepalive=30)
        except OSError as err:
            raise CheckFailed(f"cannot connect as the device to end its session: {err}") from None
        kicker.loop_start()
        try:
            if not done.wait(timeout_s):
                raise CheckFailed("the broker did not accept the device's own credentials")
        finally:
            kicker.disconnect()
            kicker.loop_stop()
