"""Many device agents in one process, for tests, demos and benchmarks.

``fedfleet fleet simulate-devices --count N --target cpu-x86``
(:mod:`simulation.fleet_devices_cli`) enrolls N devices through the fleet API
(:func:`enroll_devices_over_api`, or reuses a credentials file), and runs N real :class:`DeviceAgent`
instances — each with its own MQTT connection, slots folder and Last Will — sharing one
small worker pool and one timer thread. The agents are the same code a Raspberry Pi
runs; only their number per process differs. With ``--processes K``
(:class:`ProcessFleet`) the N agents are split over K worker processes, so the
simulator uses every core as N real devices' CPUs would; results come back as
:class:`AgentReport` rows.

The in-process helpers that write a fleet database directly (the end-to-end tests' and
``bench/ota.py``'s) live in ``tests/e2e/ota_testkit.py``: this module reaches the fleet only
through its API.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import signal
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from edge_client.device_agent import DeviceAgent
from edge_client.device_config import BrokerSettings, DeviceConfig
from edge_client.mqtt_loop import SharedLoop
from edge_client.protocol import mqtt as proto
from simulation.device_quality import TrafficModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AgentReport:
    """One simulated agent's state, as a plain record that crosses process boundaries.

    ``timings`` are ``time.monotonic()`` values (one clock for every process of the
    machine); ``last_ack_ok`` is None before the agent acknowledged anything.
    """

    device_id: str
    connected: bool
    version: str | None
    sha256: str | None
    last_ack_ok: bool | None
    last_ack_stage: str | None
    timings: dict[str, float] = field(default_factory=dict)
    last_frame_at: float = 0.0
    dropped_chunks: int = 0


@dataclass(frozen=True)
class SimDevice:
    """An enrolled device's id and broker password."""

    device_id: str
    password: str


def enroll_devices_over_api(
    client: Any,
    *,
    count: int,
    group: str,
    target: str,
    prefix: str = "sim",
    into: list[SimDevice] | None = None,
) -> list[SimDevice]:
    """Enroll ``count`` devices into ``group`` (created if missing) through the fleet API.

    ``client`` is a :class:`fleet.client.FleetClient` with an operator token; each
    enrolment's answer carries the device's broker password, shown this once, so each
    device is appended to ``into`` (when given) as soon as it is enrolled: a caller keeps
    the credentials of those enrolled before a failure.
    """
    if count < 1:
        raise ValueError("--count must be at least 1")
    client.ensure_group(group)
    start = time.time_ns() // 1000 % 10**9
    out: list[SimDevice] = [] if into is None else into
    for i in range(count):
        enrolled = client.enroll_device(
            name=f"{prefix}-{start}-{i:05d}", hardware_target=target, group=group
        )
        out.append(SimDevice(device_id=enrolled.device.id, password=enrolled.mqtt.password))
    return out


class SimulatedFleet:
    """N agents sharing a worker pool and one timer thread; ``start()``/``stop()``."""

    def __init__(
        self,
        devices: Sequence[SimDevice],
        *,
        root: Path,
        target: str,
        public_key: Path,
        broker: BrokerSettings,
        heartbeat_s: float = 30.0,
        telemetry_s: float = 60.0,
        workers: int = 4,
        chunk_window: int = 8,
        chunk_timeout_s: float = 5.0,
        durable: bool = False,
        traffic: TrafficModel | None = None,
    ) -> None:
        """``durable=False`` skips the fsyncs a real device makes (its hundreds of simulated
        devices share one disk); give ``root`` on a tmpfs such as /dev/shm to keep them
        cheap with ``durable=True``. ``traffic``: every ``traffic.window_s`` seconds each
        agent with a model publishes one synthetic window of quality signals (telemetry
        and feedback) for the version it runs (:mod:`simulation.device_quality`)."""
        self.traffic = traffic
        self._traffic_seq = 1_000_000  # apart from the agents' own telemetry seqs
        self.executor = ThreadPoolExecutor(workers, thread_name_prefix="sim-agent")
        # One network thread for all agents (paho's per-client threads use select(),
        # which cannot watch more than ~330 clients' sockets in one process).
        self.network = SharedLoop()
        self.agents: list[DeviceAgent] = []
        for device in devices:
            config = DeviceConfig(
                device_id=device.device_id,
                target=target,
                slots_dir=Path(root) / device.device_id,
                public_key=public_key,
                broker=BrokerSettings(
                    host=broker.host,
                    port=broker.port,
                    username=device.device_id,
                    password=device.password,
                    ca_file=broker.ca_file,
                ),
                heartbeat_s=heartbeat_s,
                telemetry_s=telemetry_s,
                chunk_window=chunk_window,
                chunk_timeout_s=chunk_timeout_s,
                durable=durable,
                power_supply_dir=None,  # the host's battery is no simulated device's
            )
            self.agents.append(DeviceAgent(config, executor=self.executor, network=self.network))
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, daemon=True, name="sim-ticker")

    def start(self, *, batch: int = 50, connect_timeout_s: float = 120.0) -> SimulatedFleet:
        """Start the agents ``batch`` at a time, each batch connected before the next (a
        thousand simultaneous TLS/PBKDF2 logins would time out on a small machine)."""
        self.network.start()
        self._ticker.start()
        for first in range(0, len(self.agents), batch):
            group = self.agents[first : first + batch]
            for agent in group:
                agent.start(ticker=False)
            deadline = time.monotonic() + connect_timeout_s
            while not all(a.connected for a in group) and time.monotonic() < deadline:
                time.sleep(0.05)
        return self

    def _tick(self) -> None:
        next_traffic = time.monotonic()
        while not self._stop.wait(0.25):
            for agent in self.agents:
                agent.tick()
            if self.traffic is not None and time.monotonic() >= next_traffic:
                next_traffic = time.monotonic() + self.traffic.window_s
                self._publish_traffic(self.traffic)

    def _publish_traffic(self, traffic: TrafficModel) -> None:
        """One synthetic window per agent that runs a model, for the version it runs."""
        self._traffic_seq += 1
        for agent in self.agents:
            model = agent.model
            if model is None or not agent.connected:
                continue
            telemetry, feedback = traffic.window(
                seq=self._traffic_seq, model_version_id=model.meta.model_version_id
            )
            device = agent.config.device_id
            agent.client.publish(
                proto.topic(device, "telemetry"), proto.encode(telemetry), qos=proto.QOS
            )
            if feedback is not None:
                agent.client.publish(
                    proto.topic(device, "feedback"), proto.encode(feedback), qos=proto.QOS
                )

    def stop(self) -> None:
        self._stop.set()
        for agent in self.agents:
            agent._stopping = True
        for agent in self.agents:
            agent.stop()
        self.network.stop()
        self.executor.shutdown(wait=True, cancel_futures=True)

    def versions(self) -> dict[str, str | None]:
        """Model version each agent runs (``None`` before its first install)."""
        return {
            a.config.device_id: (a.model.meta.version if a.model else None) for a in self.agents
        }

    def reports(self) -> list[AgentReport]:
        """Every agent's state (version, last ack, install timings)."""
        out = []
        for a in self.agents:
            model, ack = a.model, (a.acks[-1] if a.acks else None)
            out.append(
                AgentReport(
                    device_id=a.config.device_id,
                    connected=a.connected,
                    version=model.meta.version if model else None,
                    sha256=model.meta.sha256 if model else None,
                    last_ack_ok=ack.ok if ack else None,
                    last_ack_stage=ack.stage if ack else None,
                    timings=dict(a.timings),
                    last_frame_at=a.last_frame_at,
                    dropped_chunks=a.dropped_chunks,
                )
            )
        return out

    def publish_telemetry(self, per_device: int, *, threads: int = 4) -> int:
        """Each agent publishes ``per_device`` telemetry messages (QoS 1) over its own
        connection, as fast as they go (load generation); the number published."""
        if per_device < 1:
            raise ValueError("per_device must be at least 1")

        def publish(share: list[DeviceAgent]) -> None:
            for seq in range(per_device):
                for agent in share:
                    message = proto.Telemetry(
                        seq=10_000 + seq,
                        window_s=1.0,
                        count=1,
                        latency_p50_ms=1.0,
                        latency_p95_ms=2.0,
                        predictions={"0": 1},
                    )
                    agent.client.publish(
                        proto.topic(agent.config.device_id, "telemetry"),
                        proto.encode(message),
                        qos=proto.QOS,
                    )

        workers = [
            threading.Thread(target=publish, args=(self.agents[i::threads],))
            for i in range(threads)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        return per_device * len(self.agents)

    def __enter__(self) -> SimulatedFleet:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


class ProcessFleet:
    """The agents of a :class:`SimulatedFleet` split over ``processes`` worker processes.

    Each worker (a fresh interpreter, started with ``spawn``) runs a
    :class:`SimulatedFleet` of every K-th device and answers over a pipe; the parent
    only coordinates. Workers stop on :meth:`stop`, when the parent's end of the pipe
    closes (the parent died), or are terminated by their own PID after a grace period.
    A worker that died or failed raises RuntimeError naming it; then :meth:`stop` the
    fleet (the other workers' answers to that request are not read).
    """

    def __init__(
        self,
        devices: Sequence[SimDevice],
        *,
        processes: int,
        reply_timeout_s: float = 600.0,
        **options: Any,
    ) -> None:
        """``options``: the keyword arguments of :class:`SimulatedFleet`."""
        if processes < 1:
            raise ValueError(f"processes must be at least 1, got {processes}")
        if not devices:
            raise ValueError("a ProcessFleet needs at least one device")
        processes = min(processes, len(devices))
        self.reply_timeout_s = reply_timeout_s
        ctx = multiprocessing.get_context("spawn")
        self._conns: list[Connection] = []
        self._children: list[Connection] = []
        self._procs: list[multiprocessing.process.BaseProcess] = []
        for k in range(processes):
            parent, child = ctx.Pipe()
            share = list(devices[k::processes])
            self._procs.append(
                ctx.Process(
                    target=_worker_main,
                    args=(child, share, options, logging.getLogger().level),
                    name=f"sim-devices-{k}",
                    daemon=True,
                )
            )
            self._conns.append(parent)
            self._children.append(child)

    @property
    def processes(self) -> int:
        return len(self._procs)

    @property
    def pids(self) -> list[int]:
        """The worker processes' PIDs (for CPU accounting)."""
        return [p.pid for p in self._procs if p.pid is not None]

    def start(self) -> ProcessFleet:
        """Start the workers and wait until each has started and connected its agents."""
        for proc in self._procs:
            proc.start()
        for child in self._children:
            child.close()  # the workers hold their ends; EOF here means a worker died
        try:
            self._collect("start")
        except BaseException:
            self.stop()
            raise
        return self

    def _ask(self, command: str, arg: object = None) -> list[Any]:
        for proc, conn in zip(self._procs, self._conns, strict=True):
            try:
                conn.send((command, arg))
            except OSError:
                raise RuntimeError(
                    f"worker {proc.name} (pid {proc.pid}) exited (code {proc.exitcode}) "
                    f"before {command!r}; its log is on stderr"
                ) from None
        return self._collect(command)

    def _collect(self, what: str) -> list[Any]:
        out = []
        for proc, conn in zip(self._procs, self._conns, strict=True):
            try:
                ready = conn.poll(self.reply_timeout_s)
                status, value = conn.recv() if ready else ("", None)
            except (EOFError, OSError):
                raise RuntimeError(
                    f"worker {proc.name} (pid {proc.pid}) exited (code {proc.exitcode}) "
                    f"during {what!r}; its log is on stderr"
                ) from None
            if not ready:
                raise RuntimeError(
                    f"worker {proc.name} (pid {proc.pid}) did not answer {what!r} within "
                    f"{self.reply_timeout_s:.0f} s"
                )
            if status != "ok":
                raise RuntimeError(f"worker {proc.name} failed during {what!r}: {value}")
            out.append(value)
        return out

    def reports(self) -> list[AgentReport]:
        """Every agent's state, from all workers."""
        return [r for rows in self._ask("reports") for r in rows]

    def publish_telemetry(self, per_device: int) -> int:
        """Every agent publishes ``per_device`` telemetry messages; the number published."""
        if per_device < 1:
            raise ValueError("per_device must be at least 1")
        return sum(self._ask("telemetry", per_device))

    def versions(self) -> dict[str, str | None]:
        return {r.device_id: r.version for r in self.reports()}

    def stop(self, *, grace_s: float = 60.0) -> None:
        """Ask every worker to stop its agents; terminate (by PID) any still running."""
        for conn in self._conns:
            with contextlib.suppress(OSError, ValueError):  # already gone
                conn.send(("stop", None))
        deadline = time.monotonic() + grace_s
        for proc in self._procs:
            if proc.pid is None:
                continue
            proc.join(max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                log.warning("worker %s did not stop in %.0f s; terminating it", proc.name, grace_s)
                proc.terminate()
                proc.join(10)
        for conn in self._conns:
            conn.close()

    def __enter__(self) -> ProcessFleet:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def _worker_main(
    conn: Connection, devices: list[SimDevice], options: dict[str, Any], log_level: int
) -> None:
    """A ProcessFleet worker: run the agents, answer the parent until told to stop."""
    logging.basicConfig(level=log_level or logging.WARNING)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and says stop
    sim = SimulatedFleet(devices, **options)
    try:
        try:
            sim.start()
            conn.send(("ok", sum(a.connected for a in sim.agents)))
        except Exception as err:
            conn.send(("error", f"{type(err).__name__}: {err}"))
            return
        while True:
            try:
                command, arg = conn.recv()
            except (EOFError, OSError):
                return  # the parent is gone
            if command == "stop":
                return
            try:
                if command == "reports":
                    conn.send(("ok", sim.reports()))
                elif command == "telemetry":
                    conn.send(("ok", sim.publish_telemetry(int(arg))))
                else:
                    conn.send(("error", f"unknown command {command!r}"))
            except Exception as err:
                conn.send(("error", f"{type(err).__name__}: {err}"))
    finally:
        sim.stop()


def save_credentials(devices: Sequence[SimDevice], path: Path) -> None:
    """Write ``[{device_id, password}]`` (mode 0600) so a later run can reuse them."""
    import os

    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump([d.__dict__ for d in devices], handle)


def load_credentials(path: Path) -> list[SimDevice]:
    try:
        rows = json.loads(Path(path).read_text())
        return [SimDevice(device_id=r["device_id"], password=r["password"]) for r in rows]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"cannot read device credentials from {path}: {err}") from None
