"""Many device agents in one process, for tests, demos and benchmarks.

``fedfleet fleet simulate-devices --count N --target cpu-x86`` enrolls N devices in the
fleet database (or reuses a credentials file), and runs N real :class:`DeviceAgent`
instances — each with its own MQTT connection, slots folder and Last Will — sharing one
small worker pool and one timer thread. The agents are the same code a Raspberry Pi
runs; only their number per process differs.

Also here, the fleet-side helpers the demo, the end-to-end tests and ``bench/ota.py``
share: enrolling devices and registering a bundle as a model version's artifact.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine

from edge_client.device_agent import DeviceAgent
from edge_client.device_config import BrokerSettings, DeviceConfig
from edge_client.mqtt_loop import SharedLoop
from fleet.artifacts import ArtifactStore
from fleet.audit import Actor
from fleet.db import session_scope

SIM_ACTOR = Actor(name="cli:simulate-devices", role="operator", source="cli")


@dataclass(frozen=True)
class SimDevice:
    """An enrolled device's id and broker password."""

    device_id: str
    password: str


def enroll_devices(
    engine: Engine, *, count: int, group: str, target: str, prefix: str = "sim"
) -> list[SimDevice]:
    """Enroll ``count`` devices into ``group`` (created if missing); return credentials."""
    from fleet.crud.devices import enroll_device
    from fleet.crud.groups import create_group, group_by_name
    from fleet.models.devices import DeviceCreate, GroupCreate

    if count < 1:
        raise ValueError("--count must be at least 1")
    out: list[SimDevice] = []
    with session_scope(engine, write=True) as session:
        if group_by_name(session, group) is None:
            create_group(session, GroupCreate(name=group), actor=SIM_ACTOR)
    start = time.time_ns() // 1000 % 10**9
    # Small transactions: the audit checks walk the session's objects at every flush.
    for first in range(0, count, 25):
        with session_scope(engine, write=True) as session:
            for i in range(first, min(first + 25, count)):
                device, password = enroll_device(
                    session,
                    DeviceCreate(
                        name=f"{prefix}-{start}-{i:05d}", hardware_target=target, group=group
                    ),
                    actor=SIM_ACTOR,
                    offline_after_s=120.0,
                )
                out.append(SimDevice(device_id=device.id, password=password))
    return out


def register_bundle(
    engine: Engine, store: ArtifactStore, *, bundle: bytes, task: str, target: str, name: str = ""
) -> int:
    """Register a model version with ``bundle`` as its signed-bundle artifact; its id."""
    import io

    from fleet.crud.registry import add_artifact, register_model
    from fleet.models.registry import ArtifactFormat, ModelVersionCreate

    stored = store.save(io.BytesIO(bundle), max_bytes=len(bundle) + 1)
    # No registry signature: a bundle carries its own Ed25519 signature over its manifest.
    with session_scope(engine, write=True) as session:
        model = register_model(session, ModelVersionCreate(task=task, name=name), actor=SIM_ACTOR)
        add_artifact(
            session,
            model,
            format=ArtifactFormat.bundle,
            target=target,
            filename="model.ffb",
            size_bytes=stored.size_bytes,
            sha256=stored.sha256,
            signature=None,
            actor=SIM_ACTOR,
        )
        return model.id or 0


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
    ) -> None:
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
                durable=False,  # hundreds of simulated devices share one disk
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
        while not self._stop.wait(0.25):
            for agent in self.agents:
                agent.tick()

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

    def __enter__(self) -> SimulatedFleet:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


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
