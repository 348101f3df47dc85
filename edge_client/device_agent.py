"""The MQTT device agent: status, heartbeats, OTA installs, inference and telemetry.

Threads: paho's network loop only *enqueues* (callbacks never block, paho issue #379);
one worker drains the agent's inbox in order (commands, chunks, timers). Several agents
can share one worker pool (the simulator runs hundreds in one process): an agent is
never drained by two workers at once.

Install flow (:mod:`edge_client.ota` does the disk work): an ``install`` command starts
(or resumes) a download; the agent subscribes to the artifact's shared topic and keeps
``chunk_window`` chunk requests in flight — the first request of a chunk ``via="artifact"``
(the fleet publishes it once for every device of the wave), a repeated one (unanswered
after ``chunk_timeout_s``, or after a reconnect) ``via="device"`` on its own topic; when
all chunks are in, it verifies, writes the inactive slot, self-tests, switches and acks.
Memory stays bounded: at most ``chunk_window`` frames from the shared topic wait in the
inbox; more are dropped on arrival (and fetched again by the repair path).
Any failure acks ``ok=false`` with the stage and keeps the previous model running.

Every command first passes :func:`edge_client.command_auth.check_command`: a rollback
must carry the fleet's signature, fresh (``issued_at`` after the last accepted one) and
unexpired, or it is refused with ``stage="auth"``; an unsigned install is allowed (the
bundle is signed; :mod:`edge_client.floor` refuses one that is not newer or of another
task, ``stage="floor"``) but the model version id it names is not believed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import logging
import queue
import ssl
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt

from edge_client.battery import read_battery
from edge_client.command_auth import Verdict, check_command
from edge_client.device_config import DeviceConfig
from edge_client.floor import FloorDamagedError
from edge_client.mqtt_loop import SharedLoop
from edge_client.ota import Download, InstallError, LoadedModel, SlotStore, install
from edge_client.protocol import mqtt as proto
from firmware_images.keys import load_public_key

log = logging.getLogger(__name__)

_MAX_LATENCIES = 2048
_ARTIFACTS = f"{proto.TOPIC_ROOT}/artifacts/"


@dataclass
class _Stats:
    """Inference counters for the current telemetry window."""

    count: int = 0
    latencies_ms: deque[float] | None = None
    predictions: Counter[str] | None = None
    features: list[np.ndarray] | None = None
    errors: int = 0
    # True class -> [correct, wrong] of the labelled outcomes reported in the window.
    labels: dict[str, list[int]] | None = None

    def reset(self, bins: tuple[tuple[float, ...], ...]) -> None:
        self.count = 0
        self.errors = 0
        self.labels = {}
        self.latencies_ms = deque(maxlen=_MAX_LATENCIES)
        self.predictions = Counter()
        self.features = [np.zeros(len(edges) + 1, dtype=np.int64) for edges in bins]


class DeviceAgent:
    """One device. ``start()`` connects and runs in background threads; ``stop()`` ends it."""

    def __init__(
        self,
        config: DeviceConfig,
        *,
        executor: Executor | None = None,
        network: SharedLoop | None = None,
    ) -> None:
        """``executor`` and ``network`` are shared by a simulator's agents; a real device
        leaves them out (own worker thread, paho's own network thread)."""
        self.config = config
        self._network = network
        bundle_key = load_public_key(config.public_key)
        self._command_key = (
            load_public_key(config.command_public_key)
            if config.command_public_key is not None
            else bundle_key
        )
        self.store = SlotStore(
            config.slots_dir,
            public_key=bundle_key,
            target=config.target,
            max_failed_starts=config.max_failed_starts,
            durable=config.durable,
            task=config.task,
        )
        self._own_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(1, thread_name_prefix="agent")
        self._inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._drain_lock = threading.Lock()
        self._scheduled = False
        self._model_lock = threading.Lock()
        self.model: LoadedModel | None = None
        self._download: Download | None = None
        self._command: proto.Command | None = None
        self._command_signed = False  # the running install's command was signed
        self._in_flight: dict[int, float] = {}
        self._asked: set[int] = set()  # chunks of this download requested at least once
        self._shared: str | None = None  # the artifact topic this agent listens on
        self._queued_shared = 0  # frames from the shared topic waiting in the inbox
        self._queued_lock = threading.Lock()
        self._chunk_timeout = config.chunk_timeout_s  # doubles while nothing arrives
        self._bins: tuple[tuple[float, ...], ...] = ()
        self._stats = _Stats()
        self._stats.reset(())
        self._seq = itertools.count()
        self._started = time.monotonic()
        self._next_heartbeat = 0.0
        self._next_telemetry = time.monotonic() + config.telemetry_s
        self._connected = False
        self._stopping = False
        self._ticker: threading.Thread | None = None
        self._http: ThreadingHTTPServer | None = None
        self.acks: list[proto.Ack] = []  # what this agent acknowledged (for tests/diagnostics)
        self.ignored = 0  # messages refused by the protocol checks
        self.rejected_chunks = 0  # chunks whose hash did not match (fetched again)
        self.dropped_chunks = 0  # shared-topic frames dropped to keep memory bounded
        self.last_frame_at = 0.0  # monotonic time the last chunk frame arrived (any topic)
        self.timings: dict[str, float] = {}  # monotonic times of the last install's steps
        self.client = self._make_client()

    # --- life cycle -------------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        cfg = self.config
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=cfg.device_id,
            clean_session=False,
            protocol=mqtt.MQTTv311,
        )
        client.username_pw_set(cfg.broker.username or cfg.device_id, cfg.broker.password)
        if cfg.broker.ca_file is not None:
            client.tls_set(ca_certs=str(cfg.broker.ca_file), tls_version=ssl.PROTOCOL_TLS_CLIENT)
        will = proto.encode(proto.Status(online=False, target=cfg.target))
        client.will_set(proto.topic(cfg.device_id, "status"), will, qos=proto.QOS, retain=True)
        client.reconnect_delay_set(min_delay=1, max_delay=5)
        client.connect_timeout = 30.0  # seconds for CONNACK: slow links and busy hosts
        client.max_inflight_messages_set(64)
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        return client

    def start(self, *, ticker: bool = True) -> None:
        """Load the active model, connect, and start the timers (and HTTP endpoint)."""
        self.model = self.store.start()
        if self.model is not None:
            log.info("%s runs model %s", self.config.device_id, self.model.meta.version)
        broker = self.config.broker
        if self._network is not None:
            self._network.add(
                self.client, host=broker.host, port=broker.port, keepalive=broker.keepalive_s
            )
        else:
            self.client.connect_async(broker.host, broker.port, broker.keepalive_s)
            self.client.loop_start()
        if ticker:
            self._ticker = threading.Thread(target=self._tick_loop, daemon=True)
            self._ticker.start()
        if self.config.http_port is not None:
            self._http = serve_http(self, port=self.config.http_port)

    def stop(self) -> None:
        """Say offline, disconnect and stop the threads this agent owns."""
        self._stopping = True
        if self._connected:
            info = self.client.publish(
                proto.topic(self.config.device_id, "status"),
                proto.encode(proto.Status(online=False, target=self.config.target)),
                qos=proto.QOS,
                retain=True,
            )
            with contextlib.suppress(RuntimeError):
                info.wait_for_publish(timeout=2.0)
        if self._network is not None:
            self._network.remove(self.client)
        self.client.disconnect()
        if self._network is None:
            self.client.loop_stop()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        if self._own_executor:
            self._executor.shutdown(wait=True)

    def _tick_loop(self) -> None:
        while not self._stopping:
            time.sleep(0.25)
            self.tick()

    @property
    def connected(self) -> bool:
        """True once the broker accepted the connection and the agent subscribed."""
        return self._connected

    def tick(self) -> None:
        """Schedule the timers (heartbeat, telemetry, chunk timeouts) when one is due.

        Called from a timer thread; it only reads a few fields, so an idle agent costs
        nothing (a simulator ticks a thousand agents)."""
        now = time.monotonic()
        due = now >= self._next_heartbeat or now >= self._next_telemetry
        if not due and self._download is not None:
            try:
                oldest = min(list(self._in_flight.values()), default=now)
            except RuntimeError:  # changed by the worker while we looked: just tick
                oldest = 0.0
            due = now - oldest > self._chunk_timeout or not self._in_flight
        if due and self._connected:
            self._enqueue("tick", None)

    # --- paho callbacks: enqueue only -------------------------------------------

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self._enqueue("connected", not reason.is_failure)

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, _reason: Any, _p: Any) -> None:
        self._enqueue("disconnected", None)

    def _on_message(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        if message.topic.endswith("/chunk"):
            self.last_frame_at = time.monotonic()
        if message.topic.startswith(_ARTIFACTS):
            with self._queued_lock:
                if self._queued_shared >= self.config.chunk_window:
                    self.dropped_chunks += 1  # memory bound; the repair path refetches it
                    return
                self._queued_shared += 1
            self._enqueue("shared", (message.topic, bytes(message.payload)))
            return
        self._enqueue("message", (message.topic, bytes(message.payload)))

    def _enqueue(self, kind: str, value: Any) -> None:
        self._inbox.put((kind, value))
        with self._drain_lock:
            if self._scheduled or (self._stopping and kind != "message"):
                return
            self._scheduled = True
        with contextlib.suppress(RuntimeError):  # the executor was shut down
            self._executor.submit(self._drain)

    def _drain(self) -> None:
        while True:
            try:
                kind, value = self._inbox.get_nowait()
            except queue.Empty:
                with self._drain_lock:
                    if self._inbox.empty():
                        self._scheduled = False
                        return
                continue
            try:
                self._handle(kind, value)
            except Exception:  # one bad message must never stop the agent
                log.exception("%s: error while handling %s", self.config.device_id, kind)

    # --- the work ---------------------------------------------------------------

    def _handle(self, kind: str, value: Any) -> None:
        if kind == "connected":
            if value:
                self._connected = True
                self._on_connected()
        elif kind == "disconnected":
            self._connected = False
            self._in_flight.clear()
        elif kind == "tick":
            self._on_tick()
        elif kind == "message":
            self._on_mqtt(*value)
        elif kind == "shared":
            with self._queued_lock:
                self._queued_shared -= 1
            self._on_shared(*value)

    def _on_connected(self) -> None:
        dev = self.config.device_id
        topics = [(proto.topic(dev, "cmd"), proto.QOS), (proto.topic(dev, "chunk"), proto.QOS)]
        if self._shared is not None:
            topics.append((self._shared, proto.QOS))
        self.client.subscribe(topics)
        self.publish_status()
        self._heartbeat()
        self._in_flight.clear()
        self._request_chunks()

    def _on_tick(self) -> None:
        now = time.monotonic()
        if not self._connected:
            return
        if now >= self._next_heartbeat:
            self._heartbeat()
        if now >= self._next_telemetry:
            self._publish_telemetry(now)
        if self._download is not None:
            stale = [i for i, t in self._in_flight.items() if now - t > self._chunk_timeout]
            for index in stale:
                del self._in_flight[index]
            if stale:
                # Back off: a busy fleet answers late; asking again at once would only
                # add to its queue (congestion collapse).
                self._chunk_timeout = min(self._chunk_timeout * 2, 120.0)
                self._request_chunks()

    def _on_mqtt(self, topic_name: str, payload: bytes) -> None:
        try:
            device, channel = proto.parse_topic(topic_name)
            if device != self.config.device_id:
                raise proto.ProtocolError(f"message for another device {device}")
            if channel == "chunk":
                self._on_chunk(proto.decode_chunk(payload))
                return
            message = proto.decode(payload, channel=channel)
        except proto.ProtocolError as err:
            self.ignored += 1
            log.warning("%s: ignored a message on %s: %s", self.config.device_id, topic_name, err)
            return
        if isinstance(message, proto.Command):
            self._on_command(message)

    def _on_shared(self, topic_name: str, payload: bytes) -> None:
        download = self._download
        sha = proto.parse_artifact_topic(topic_name)
        if download is None or sha != download.transfer_id:
            return  # published for others after this download ended (or before): harmless
        try:
            chunk = proto.decode_chunk(payload)
            if chunk.transfer_id != sha:
                raise proto.ProtocolError("chunk of another transfer on an artifact topic")
        except proto.ProtocolError as err:
            self.ignored += 1
            log.warning("%s: ignored a message on %s: %s", self.config.device_id, topic_name, err)
            return
        self._on_chunk(chunk)

    def _listen_shared(self, sha256: str | None) -> None:
        """Subscribe to the artifact topic of the running download (None: leave it)."""
        topic_name = proto.artifact_topic(sha256) if sha256 is not None else None
        if topic_name == self._shared:
            return
        if self._shared is not None and self._connected:
            self.client.unsubscribe(self._shared)
        self._shared = topic_name
        if topic_name is not None and self._connected:
            # Mosquitto handles one client's packets in order, so this subscription is in
            # place before the chunk request that follows reaches the fleet.
            self.client.subscribe(topic_name, proto.QOS)

    def _authenticate(self, command: proto.Command) -> Verdict:
        """Check the command's envelope; remember an accepted signed one (the replay floor)."""
        try:
            floor = self.store.floor()
        except FloorDamagedError as err:
            return Verdict(ok=False, reason=str(err))
        verdict = check_command(
            command,
            device_id=self.config.device_id,
            public_key=self._command_key,
            last_issued_at=floor.command_issued_at,
            last_command_id=floor.command_id,
            now_ms=int(time.time() * 1000),
        )
        if verdict.ok and verdict.signed:
            self.store.write_floor(
                dataclasses.replace(
                    floor, command_issued_at=command.issued_at or 0, command_id=command.command_id
                )
            )
        return verdict

    def _on_command(self, command: proto.Command) -> None:
        verdict = self._authenticate(command)
        if verdict.duplicate:
            log.info(
                "%s: ignored a second delivery of %s", self.config.device_id, command.command_id
            )
            return
        if not verdict.ok:
            log.warning("%s: refused %s: %s", self.config.device_id, command.action, verdict.reason)
            self._ack(command, ok=False, stage="auth", error=verdict.reason)
            return
        if command.action == "ping":
            self._ack(command, ok=True, stage=self._maybe_adopt_bins(command))
        elif command.action == "rollback":
            self._rollback(command)
        elif command.action == "install":
            self._begin_install(command)

    def _maybe_adopt_bins(self, command: proto.Command) -> str:
        """A ping carrying ``telemetry_bins`` for the version this device runs is a new
        drift reference: count inputs in these bins from now on (the window restarts).
        Bins for another version (or none) change nothing. Returns the ack's stage."""
        if not command.telemetry_bins:
            return ""
        with self._model_lock:
            running = self.model.meta.model_version_id if self.model else None
            if running is None or command.model_version_id != running:
                return "bins-ignored"
            self._bins = command.telemetry_bins
            self._stats.reset(self._bins)
        return "bins-updated"

    def _begin_install(self, command: proto.Command) -> None:
        self._command_signed = command.signature is not None  # checked by _authenticate
        ref = command.artifact
        assert ref is not None  # checked by the protocol  # noqa: S101
        if self.model is not None and self.model.meta.sha256 == ref.sha256:
            self._ack(command, ok=True, stage="already-installed")
            return
        if self._download is not None and self._download.transfer_id == ref.sha256:
            self._command = command  # a resend: keep the transfer, answer this command
            self._request_chunks()
            return
        self._command = command
        self._bins = command.telemetry_bins
        self.timings = {"command": time.monotonic()}
        if self._download is not None:
            self._download.close()  # superseded: its .part is deleted by the next line
        self._download = self.store.download(ref)
        self._in_flight.clear()
        self._asked.clear()
        log.info(
            "%s: fetching %s (%d chunks, %d already here)",
            self.config.device_id,
            ref.sha256[:12],
            ref.chunks,
            self._download.received,
        )
        if self._download.complete:
            self._finish_install()
        else:
            self._listen_shared(ref.sha256)
            self._request_chunks()

    def _request_chunks(self) -> None:
        download = self._download
        if download is None or not self._connected:
            return
        room = self.config.chunk_window - len(self._in_flight)
        if room <= 0:
            return
        wanted = [i for i in download.missing() if i not in self._in_flight][:room]
        if not wanted:
            return
        now = time.monotonic()
        for index in wanted:
            self._in_flight[index] = now
        batches: list[tuple[list[int], proto.Via]] = [(wanted, "device")]
        if self._shared is not None:
            first = [i for i in wanted if i not in self._asked]
            self._asked.update(first)
            batches = [(first, "artifact"), ([i for i in wanted if i not in first], "device")]
        for indices, via in batches:
            if not indices:
                continue
            request = proto.ChunkRequest(
                transfer_id=download.transfer_id, indices=tuple(indices), via=via
            )
            self.client.publish(
                proto.topic(self.config.device_id, "chunk-req"),
                proto.encode(request),
                qos=proto.QOS,
            )

    def _on_chunk(self, chunk: proto.Chunk) -> None:
        download = self._download
        if download is None:
            log.info("%s: ignored a chunk with no transfer running", self.config.device_id)
            return
        if chunk.transfer_id != download.transfer_id:
            self.ignored += 1
        rejected = download.rejected
        download.accept(chunk)  # logs and ignores anything that does not belong
        self.rejected_chunks += download.rejected - rejected
        if chunk.transfer_id == download.transfer_id:
            self._in_flight.pop(chunk.index, None)
            self._chunk_timeout = self.config.chunk_timeout_s
        if download.complete:
            self._finish_install()
        else:
            self._request_chunks()

    def _finish_install(self) -> None:
        self.timings["downloaded"] = time.monotonic()
        download, command = self._download, self._command
        self._download, self._command = None, None
        self._in_flight.clear()
        self._listen_shared(None)
        assert download is not None and command is not None  # noqa: S101
        try:
            path = download.finish()
            loaded = install(
                self.store,
                bundle_file=path,
                # Believed only when signed; the id the signed manifest names wins anyway.
                model_version_id=command.model_version_id if self._command_signed else None,
                hold_before_switch_s=self.config.hold_before_switch_s,
                move=True,  # the verified download becomes the slot's bundle (no copy)
            )
        except InstallError as err:
            log.error("%s: install failed at %s: %s", self.config.device_id, err.stage, err)
            download.discard()
            self._ack(command, ok=False, stage=err.stage, error=str(err))
            return
        download.discard()
        with self._model_lock:
            self.model = loaded
            self._stats.reset(self._bins)
        log.info("%s: now runs %s", self.config.device_id, loaded.meta.version)
        self.timings["installed"] = time.monotonic()
        self.publish_status()
        self._ack(command, ok=True, stage="installed")

    def _rollback(self, command: proto.Command) -> None:
        slot = self.store.rollback(reason=f"fleet command {command.command_id}")
        if slot is None:
            self._ack(command, ok=False, stage="rollback", error="no previous model to go back to")
            return
        try:
            loaded = self.store.load_slot(slot)
        except InstallError as err:
            self._ack(command, ok=False, stage="rollback", error=str(err))
            return
        with self._model_lock:
            self.model = loaded
        self.publish_status()
        self._ack(command, ok=True, stage="rolled-back")

    # --- publishing -------------------------------------------------------------

    def _publish(
        self, channel: proto.Channel, message: proto.Message, *, retain: bool = False
    ) -> None:
        self.client.publish(
            proto.topic(self.config.device_id, channel),
            proto.encode(message),
            qos=proto.QOS,
            retain=retain,
        )

    def publish_status(self) -> None:
        model = self.model
        status = proto.Status(
            online=True,
            model_version_id=model.meta.model_version_id if model else None,
            model_version=model.meta.version if model else None,
            sha256=model.meta.sha256 if model else None,
            slot=model.slot if model else None,
            target=self.config.target,
            region=self.config.region,
        )
        self._publish("status", status, retain=True)

    def _heartbeat(self) -> None:
        self._next_heartbeat = time.monotonic() + self.config.heartbeat_s
        model = self.model
        self._publish(
            "heartbeat",
            proto.Heartbeat(
                uptime_s=round(time.monotonic() - self._started, 3),
                model_version_id=model.meta.model_version_id if model else None,
            ),
        )

    def _publish_telemetry(self, now: float) -> None:
        window = self.config.telemetry_s
        self._next_telemetry = now + window
        with self._model_lock:
            stats = self._stats
            self._stats = _Stats()
            self._stats.reset(self._bins)
            model = self.model
        lat = np.asarray(stats.latencies_ms or [0.0])
        message = proto.Telemetry(
            seq=next(self._seq),
            window_s=window,
            count=stats.count,
            latency_p50_ms=float(np.percentile(lat, 50)),
            latency_p95_ms=float(np.percentile(lat, 95)),
            model_version_id=model.meta.model_version_id if model else None,
            predictions=dict(stats.predictions or {}),
            errors=min(stats.errors, proto.MAX_COUNT),
            features=tuple(
                proto.FeatureSummary(counts=tuple(int(c) for c in f)) for f in stats.features or []
            ),
            battery=(
                read_battery(self.config.power_supply_dir)
                if self.config.power_supply_dir is not None
                else None
            ),
            region=self.config.region,
        )
        self._publish("telemetry", message)
        if stats.labels:  # only where labels came back in the window
            self._publish(
                "feedback",
                proto.Feedback(
                    seq=message.seq,
                    window_s=window,
                    model_version_id=message.model_version_id,
                    labels={
                        k: proto.LabelCount(
                            correct=min(c, proto.MAX_COUNT), wrong=min(w, proto.MAX_COUNT)
                        )
                        for k, (c, w) in stats.labels.items()
                    },
                ),
            )

    def _ack(self, command: proto.Command, *, ok: bool, stage: str = "", error: str = "") -> None:
        model = self.model
        ack = proto.Ack(
            command_id=command.command_id,
            ok=ok,
            action=command.action,
            rollout_id=command.rollout_id,
            model_version_id=model.meta.model_version_id if model else None,
            stage=stage,
            error=error[:500],
        )
        self.acks.append(ack)
        self._publish("ack", ack)

    # --- inference for the local application -------------------------------------

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Run the active model on a float32 batch; raise RuntimeError if none is installed."""
        with self._model_lock:
            model = self.model
        if model is None:
            raise RuntimeError("no model installed yet; wait for a rollout")
        batch = np.asarray(x, dtype=np.float32)
        began = time.perf_counter()
        try:
            out = model.runner.run(batch)
        except Exception:
            with self._model_lock:
                self._stats.errors += 1  # reported as telemetry ``errors``
            raise
        elapsed_ms = (time.perf_counter() - began) * 1000.0
        self._record(batch, out, elapsed_ms)
        return out

    def feedback(self, *, labels: Sequence[int | str], predicted: Sequence[int | str]) -> None:
        """Report labelled outcomes: the true ``labels`` that came back for earlier
        inferences and what the model ``predicted`` for them (same length). Counted per
        true class in the current window and sent as a ``feedback`` message with its
        telemetry (only classes seen; at most ``MAX_CLASSES`` of them)."""
        if len(labels) != len(predicted):
            raise ValueError(
                f"labels ({len(labels)}) and predicted ({len(predicted)}) must be as long"
            )
        with self._model_lock:
            counts = self._stats.labels
            assert counts is not None  # noqa: S101 - reset() sets it
            for truth, guess in zip(labels, predicted, strict=True):
                key = str(truth)[:64]
                if key not in counts and len(counts) >= proto.MAX_CLASSES:
                    continue  # bounded: classes past the limit are not counted
                row = counts.setdefault(key, [0, 0])
                row[0 if str(guess) == str(truth) else 1] += 1

    def _record(self, batch: np.ndarray, out: np.ndarray, elapsed_ms: float) -> None:
        with self._model_lock:
            stats = self._stats
            stats.count += len(batch)
            assert stats.latencies_ms is not None and stats.predictions is not None  # noqa: S101
            stats.latencies_ms.append(elapsed_ms)
            if out.ndim == 2:
                stats.predictions.update(str(int(c)) for c in out.argmax(axis=1))
            flat = batch.reshape(len(batch), -1)
            for j, edges in enumerate(self._bins[: flat.shape[1]]):
                if stats.features is not None and j < len(stats.features):
                    idx = np.searchsorted(np.asarray(edges), flat[:, j], side="right")
                    stats.features[j] += np.bincount(idx, minlength=len(edges) + 1)


def serve_http(agent: DeviceAgent, *, port: int) -> ThreadingHTTPServer:
    """A small inference endpoint on 127.0.0.1: ``POST /predict``, ``GET /status``."""

    class Handler(BaseHTTPRequestHandler):
        def _send(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path != "/status":
                self._send(404, {"detail": "use GET /status or POST /predict"})
                return
            model = agent.model
            self._send(200, {"model_version": model.meta.version if model else None})

        def do_POST(self) -> None:
            if self.path != "/predict":
                self._send(404, {"detail": "use POST /predict"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            if length > 16 * 1024 * 1024:
                self._send(413, {"detail": "body over 16 MiB"})
                return
            try:
                inputs = np.asarray(json.loads(self.rfile.read(length))["inputs"], np.float32)
                out = agent.predict(inputs)
            except (ValueError, KeyError, TypeError) as err:
                self._send(400, {"detail": f'send {{"inputs": [[...], ...]}}: {err}'})
                return
            except RuntimeError as err:
                self._send(503, {"detail": str(err)})
                return
            self._send(200, {"outputs": out.tolist(), "classes": out.argmax(axis=1).tolist()})

        def log_message(self, format: str, *args: Any) -> None:
            log.debug(format, *args)

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


AgentFactory = Callable[[DeviceConfig], DeviceAgent]
