"""A light MQTT load generator: N authenticated device connections, not full agents.

Each simulated device is one MQTT 3.1.1 connection spoken by a lean hand-written client
(an :class:`asyncio.Protocol`, a few hundred bytes of state) with the device's own broker
user name and password, as the fleet hands them out:

- CONNECT with client id = user name = device id, a Last Will (``status`` retained,
  ``online: false``) and a keep-alive;
- on CONNACK: publishes its retained ``status`` (online), subscribes to its ``cmd``
  topic (QoS 1), then sends a ``heartbeat`` (QoS 1) every ``heartbeat_s`` (the first one
  at a random moment of the first period, so a swarm does not beat in step);
- every command it receives is acknowledged at the MQTT level (PUBACK), decoded with the
  device protocol (:func:`edge_client.protocol.mqtt.decode`) and counted; install commands
  are counted apart. It does not download or install (that is what full agents do).

Payloads come from :mod:`edge_client.protocol.mqtt` (``encode``), so the fleet stores
what it would store from a real agent. Connections are spread over ``processes`` worker
processes (each raises RLIMIT_NOFILE to its hard limit and runs uvloop when installed)
and over ``source_ips`` local addresses ``127.0.0.2`` ... (one ephemeral port range per
source address, ~28,000 ports each), and over several broker ports (``ports``: device i
uses ``ports[i % len(ports)]``).

    swarm = Swarm(devices, host="127.0.0.1", ports=[1883]).start()
    swarm.wait(lambda s: s.connected == len(devices), timeout_s=60)
    print(swarm.stats())
    swarm.stop()

``python bench/mqtt_swarm.py --help`` runs one against a broker from the command line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import random
import resource
import ssl
import struct
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_client.protocol import mqtt as proto

CONNECT, CONNACK, PUBLISH, PUBACK, SUBSCRIBE, SUBACK = 1, 2, 3, 4, 8, 9
PINGREQ, PINGRESP, DISCONNECT = 12, 13, 14
MAX_ERRORS_KEPT = 5
CONNECT_ATTEMPTS = 3  # a TCP connect that fails (backlog full, timed out) is tried again
# The same for every device: encoded once per process.
OFFLINE = proto.encode(proto.Status(online=False))
ONLINE = proto.encode(proto.Status(online=True, agent="fedfleet-swarm"))


# --- the MQTT 3.1.1 packets this client speaks ------------------------------------------


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        digit, n = n % 128, n // 128
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _text(value: str | bytes) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    return struct.pack("!H", len(raw)) + raw


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + _remaining_length(len(body)) + body


def connect_packet(
    *, client_id: str, username: str, password: str, keepalive: int, will: tuple[str, bytes]
) -> bytes:
    """CONNECT (MQTT 3.1.1): clean session, user name and password, a retained QoS 1 Will."""
    flags = 0x80 | 0x40 | 0x20 | 0x08 | 0x04 | 0x02  # user, pass, will retain, QoS 1, will, clean
    body = _text("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive)
    body += _text(client_id) + _text(will[0]) + _text(will[1]) + _text(username) + _text(password)
    return _packet(CONNECT << 4, body)


def publish_packet(topic: str, payload: bytes, *, packet_id: int, retain: bool = False) -> bytes:
    """PUBLISH at QoS 1."""
    body = _text(topic) + struct.pack("!H", packet_id) + payload
    return _packet((PUBLISH << 4) | 0x02 | (0x01 if retain else 0), body)


def subscribe_packet(topic: str, *, packet_id: int, qos: int = 1) -> bytes:
    return _packet(
        (SUBSCRIBE << 4) | 0x02, struct.pack("!H", packet_id) + _text(topic) + bytes([qos])
    )


def puback_packet(packet_id: int) -> bytes:
    return bytes([PUBACK << 4, 2]) + struct.pack("!H", packet_id)


# --- one device connection ------------------------------------------------------------


@dataclass
class Counters:
    """What one worker (or, summed, the whole swarm) has seen so far."""

    connected: int = 0  # CONNACK accepted, connection still open
    ever_connected: int = 0
    refused: int = 0  # CONNACK with a non-zero return code (bad credentials, ...)
    failed: int = 0  # TCP/TLS connect failed CONNECT_ATTEMPTS times or the connection was lost
    retried: int = 0  # TCP/TLS connects tried again
    subscribed: int = 0
    heartbeats: int = 0  # heartbeats published
    pubacks: int = 0  # PUBACKs received for our publishes
    commands: int = 0  # commands received (every one decoded by the device protocol)
    installs: int = 0  # ... of which install commands
    devices_with_install: int = 0  # devices that got at least one install command
    bad_commands: int = 0  # received on cmd but refused by proto.decode
    errors: list[str] = field(default_factory=list)

    def add(self, other: Counters) -> None:
        for f in fields(self):
            if f.name == "errors":
                self.errors.extend(other.errors[: MAX_ERRORS_KEPT - len(self.errors)])
            else:
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def error(self, text: str) -> None:
        if len(self.errors) < MAX_ERRORS_KEPT:
            self.errors.append(text)


class DeviceConnection(asyncio.Protocol):
    """One device's MQTT session (see the module docstring)."""

    __slots__ = (
        "buf",
        "counters",
        "device_id",
        "done",
        "got_install",
        "heartbeat_s",
        "loop",
        "next_id",
        "password",
        "started",
        "timer",
        "transport",
        "up",
    )

    def __init__(
        self, device_id: str, password: str, counters: Counters, heartbeat_s: float
    ) -> None:
        self.device_id = device_id
        self.password = password
        self.counters = counters
        self.heartbeat_s = heartbeat_s
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.next_id = 0
        self.got_install = False
        self.started = time.monotonic()
        self.up = False
        self.done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.timer: asyncio.TimerHandle | None = None
        self.loop = asyncio.get_running_loop()

    def _id(self) -> int:
        self.next_id = self.next_id % 65535 + 1
        return self.next_id

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one
        writer = cast(asyncio.Transport, transport)
        self.transport = writer
        keepalive = min(65535, max(60, int(self.heartbeat_s * 3)))
        writer.write(
            connect_packet(
                client_id=self.device_id,
                username=self.device_id,
                password=self.password,
                keepalive=keepalive,
                will=(proto.topic(self.device_id, "status"), OFFLINE),
            )
        )

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        while len(buf) >= 2:
            length, mult, i = 0, 1, 1
            while True:
                if i >= len(buf):
                    self.buf = buf
                    return
                byte = buf[i]
                length += (byte & 0x7F) * mult
                mult *= 128
                i += 1
                if not byte & 0x80:
                    break
            if len(buf) < i + length:
                break
            self._packet(buf[0], buf[i : i + length])
            buf = buf[i + length :]
        self.buf = buf

    def _packet(self, first: int, body: bytes) -> None:
        kind = first >> 4
        if kind == CONNACK:
            self._connack(body[1] if len(body) > 1 else 255)
        elif kind == PUBLISH:
            self._publish(first, body)
        elif kind == PUBACK:
            self.counters.pubacks += 1
        elif kind == SUBACK:
            if body[-1:] == b"\x80":
                self.counters.error(f"{self.device_id}: subscription to cmd refused")
            else:
                self.counters.subscribed += 1

    def _connack(self, code: int) -> None:
        transport = self.transport
        assert transport is not None
        if code != 0:
            self.counters.refused += 1
            self.counters.error(f"{self.device_id}: CONNACK return code {code}")
            transport.close()
            return
        self.up = True
        self.counters.connected += 1
        self.counters.ever_connected += 1
        transport.write(
            publish_packet(
                proto.topic(self.device_id, "status"), ONLINE, packet_id=self._id(), retain=True
            )
            + subscribe_packet(proto.topic(self.device_id, "cmd"), packet_id=self._id())
        )
        if not self.done.done():
            self.done.set_result(True)
        self.timer = self.loop.call_later(random.uniform(0, self.heartbeat_s), self._beat)

    def _beat(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        beat = proto.Heartbeat(uptime_s=round(time.monotonic() - self.started, 3))
        self.transport.write(
            publish_packet(
                proto.topic(self.device_id, "heartbeat"), proto.encode(beat), packet_id=self._id()
            )
        )
        self.counters.heartbeats += 1
        self.timer = self.loop.call_later(self.heartbeat_s, self._beat)

    def _publish(self, first: int, body: bytes) -> None:
        (topic_len,) = struct.unpack_from("!H", body)
        at = 2 + topic_len
        qos = (first >> 1) & 0x03
        if qos:
            (packet_id,) = struct.unpack_from("!H", body, at)
            at += 2
            assert self.transport is not None
            self.transport.write(puback_packet(packet_id))
        payload = body[at:]
        self.counters.commands += 1
        try:
            message = proto.decode(payload, channel="cmd")
        except proto.ProtocolError as err:
            self.counters.bad_commands += 1
            self.counters.error(f"{self.device_id}: command refused by the protocol: {err}")
            return
        if isinstance(message, proto.Command) and message.action == "install":
            self.counters.installs += 1
            if not self.got_install:
                self.got_install = True
                self.counters.devices_with_install += 1

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.up:
            self.counters.connected -= 1
            self.up = False
        if not self.done.done():
            self.done.set_result(False)
        if exc is not None:
            self.counters.failed += 1
            self.counters.error(f"{self.device_id}: connection lost: {exc}")

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(bytes([DISCONNECT << 4, 0]))
            self.transport.close()


# --- a worker process: its share of the devices on one event loop -------------------


@dataclass(frozen=True)
class WorkerPlan:
    devices: Sequence[tuple[str, str]]  # (device id, password)
    host: str
    ports: Sequence[int]
    source_ips: Sequence[str]
    heartbeat_s: float
    connect_concurrency: int
    tls_ca: str | None = None


def raise_nofile() -> tuple[int, int]:
    """Raise this process's open-file soft limit to its hard limit; (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


async def _run_worker(plan: WorkerPlan, conn: Any, stop: Any, offset: int) -> None:
    counters = Counters()
    loop = asyncio.get_running_loop()
    ctx: ssl.SSLContext | None = None
    if plan.tls_ca is not None:
        ctx = ssl.create_default_context(cafile=plan.tls_ca)
        ctx.check_hostname = False
    gate = asyncio.Semaphore(plan.connect_concurrency)
    connections: list[DeviceConnection] = []

    async def open_one(index: int, device_id: str, password: str) -> None:
        source = plan.source_ips[(offset + index) % len(plan.source_ips)]
        port = plan.ports[(offset + index) % len(plan.ports)]
        for attempt in range(CONNECT_ATTEMPTS):  # a device retries, as agents do
            async with gate:
                try:
                    _t, proto_conn = await loop.create_connection(
                        lambda: DeviceConnection(device_id, password, counters, plan.heartbeat_s),
                        plan.host,
                        port,
                        local_addr=(source, 0),
                        ssl=ctx,
                    )
                except OSError as err:
                    if attempt + 1 < CONNECT_ATTEMPTS:
                        counters.retried += 1
                        continue
                    counters.failed += 1
                    counters.error(
                        f"{device_id}: connect to {plan.host}:{port} from {source}: {err}"
                    )
                    return
                connections.append(proto_conn)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(proto_conn.done), 30)
                return

    tasks = [asyncio.ensure_future(open_one(i, d, p)) for i, (d, p) in enumerate(plan.devices)]
    while not stop.is_set():
        conn.send(counters)
        counters.errors = counters.errors[:MAX_ERRORS_KEPT]
        await asyncio.sleep(0.5)
    for task in tasks:
        task.cancel()
    for c in connections:
        c.close()
    await asyncio.sleep(0.2)
    conn.send(counters)


def _worker_main(plan: WorkerPlan, conn: Any, stop: Any, offset: int) -> None:
    raise_nofile()
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    asyncio.run(_run_worker(plan, conn, stop, offset))


class Swarm:
    """``devices`` connections spread over ``processes`` workers (see the module docstring)."""

    def __init__(
        self,
        devices: Sequence[tuple[str, str]],
        *,
        host: str = "127.0.0.1",
        ports: Sequence[int] = (1883,),
        processes: int = 1,
        source_ips: int = 1,
        heartbeat_s: float = 30.0,
        connect_concurrency: int = 256,
        tls_ca: Path | None = None,
    ) -> None:
        if processes < 1 or source_ips < 1 or heartbeat_s <= 0:
            raise ValueError("processes and source_ips must be >= 1, heartbeat_s > 0")
        ips = [f"127.0.0.{2 + i}" for i in range(source_ips)] if host.startswith("127.") else [""]
        ctx = multiprocessing.get_context("spawn")
        self._stop = ctx.Event()
        self._workers: list[tuple[Any, Any]] = []
        self._latest: list[Counters] = []
        share = -(-len(devices) // processes)
        for k in range(processes):
            part = devices[k * share : (k + 1) * share]
            if not part:
                continue
            plan = WorkerPlan(
                devices=list(part),
                host=host,
                ports=list(ports),
                source_ips=ips if ips != [""] else ["0.0.0.0"],
                heartbeat_s=heartbeat_s,
                connect_concurrency=connect_concurrency,
                tls_ca=str(tls_ca) if tls_ca is not None else None,
            )
            here, there = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_worker_main, args=(plan, there, self._stop, k * share))
            self._workers.append((proc, here))
            self._latest.append(Counters())

    @property
    def pids(self) -> list[int]:
        return [p.pid for p, _ in self._workers if p.pid is not None]

    def start(self) -> Swarm:
        for proc, _ in self._workers:
            proc.start()
        return self

    def stats(self) -> Counters:
        """The workers' counters, summed (each worker reports every 0.5 s)."""
        for i, (_p, conn) in enumerate(self._workers):
            while conn.poll():
                try:
                    self._latest[i] = conn.recv()
                except EOFError:
                    break
        total = Counters()
        for c in self._latest:
            total.add(c)
        return total

    def alive(self) -> bool:
        return all(p.is_alive() for p, _ in self._workers)

    def wait(
        self, predicate: Callable[[Counters], bool], *, timeout_s: float, what: str
    ) -> Counters:
        """Poll until ``predicate(stats)``; AssertionError naming ``what`` after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            stats = self.stats()
            if predicate(stats):
                return stats
            if time.monotonic() > deadline or not self.alive():
                raise AssertionError(
                    f"timed out after {timeout_s} s waiting for {what}: {stats}"
                    if self.alive()
                    else f"a swarm worker died waiting for {what}: {stats}"
                )
            time.sleep(0.25)

    def stop(self) -> Counters:
        self._stop.set()
        for proc, _ in self._workers:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
                proc.join()
        return self.stats()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--credentials", type=Path, required=True, help="lines 'device_id password'"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, action="append", default=None)
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--source-ips", type=int, default=4)
    parser.add_argument("--heartbeat-s", type=float, default=30.0)
    parser.add_argument(
        "--seconds", type=float, default=30.0, help="hold the connections this long"
    )
    parser.add_argument("--tls-ca", type=Path, default=None)
    args = parser.parse_args()
    if not args.credentials.is_file():
        parser.error(f"--credentials {args.credentials} not found; one 'device_id password' a line")
    devices = [
        tuple(line.split()[:2]) for line in args.credentials.read_text().splitlines() if line
    ]
    swarm = Swarm(
        devices,  # type: ignore[arg-type]
        host=args.host,
        ports=args.port or [1883],
        processes=args.processes,
        source_ips=args.source_ips,
        heartbeat_s=args.heartbeat_s,
        tls_ca=args.tls_ca,
    ).start()
    end = time.monotonic() + args.seconds
    try:
        while time.monotonic() < end:
            time.sleep(2)
            print(swarm.stats(), flush=True)
    finally:
        print(swarm.stop())


if __name__ == "__main__":
    main()
