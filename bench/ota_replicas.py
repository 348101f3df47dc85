"""Telemetry into PostgreSQL over N `fedfleet fleet mqtt --replica` processes
(``python bench/ota.py --replicas N``; issue 16 items 2 and 4).

A fleet of ``--devices`` enrolled devices on a fresh PostgreSQL schema, Mosquitto started
with broker-config's files and its one-session-per-user listener, one broker user per
replica (``broker-config --replicas``), N real ``fleet mqtt --replica rK`` processes
sharing the device subscriptions (``$share/fedfleet/...``). Each device publishes its
share of ``--telemetry`` messages (QoS 1) over its own connection with Mosquitto's C
client (``mosquitto_pub -l``: one message per stdin line), all devices at once, so the
publishers cost little next to the fleet. Measured: messages/s from the first publish
until the last row is in PostgreSQL, rows = published (nothing lost, each once), and
each replica process's CPU (user + system) over the run: CPU µs per message it
stored. That CPU per message, not the total rate on this shared 2-core machine, is
what sizes a production's replicas (docs/scale-out.md).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from ota_testkit import OtaFleet, ReplicaProcess, wait_for
from sqlmodel import Session, func, select

from edge_client.protocol import mqtt as proto
from fleet.models.ota import TelemetryRecord
from fleet.ota.broker_config import SESSION_PER_USER
from fleet.ota.guard import DEFAULT_RATES, Limits, Rate

FEDFLEET = str(Path(sys.executable).parent / "fedfleet")
GOAL_RATE = 20_000  # messages/s into PostgreSQL (issue 16, item 4)


def _cpu_s(replica: ReplicaProcess) -> float:
    times = psutil.Process(replica.process.pid).cpu_times()
    return float(times.user + times.system)


def _payloads(per: int) -> bytes:
    """``per`` telemetry messages, one JSON line each (seq 0..per-1)."""
    features = tuple(proto.FeatureSummary(counts=(1, 5, 20, 50, 20, 3, 1)) for _ in range(4))
    return b"".join(
        proto.encode(
            proto.Telemetry(
                seq=seq,
                window_s=60.0,
                count=100,
                latency_p50_ms=1.5,
                latency_p95_ms=3.2,
                predictions={"0": 60, "1": 40},
                features=features,
            )
        )
        + b"\n"
        for seq in range(per)
    )


def _stored(fleet: OtaFleet) -> int:
    with Session(fleet.engine) as session:
        return int(session.exec(select(func.count()).select_from(TelemetryRecord)).one())


def run(*, replicas: int, devices: int, messages: int, database: str) -> dict[str, Any]:
    """Run once; returns the numbers (and prints them)."""
    names = tuple(f"r{k}" for k in range(1, replicas + 1))
    per = -(-messages // devices)
    burst = DEFAULT_RATES["telemetry"].burst  # the replica processes run the default limits
    if per > burst:
        raise SystemExit(
            f"{per} messages per device exceed the fleet's telemetry burst of {burst} per "
            f"device, which the replicas enforce: use at least {-(-messages // burst)} devices"
        )
    # The bench measures ingestion, not the per-device limit (which has its own test).
    rates = {**DEFAULT_RATES, "telemetry": Rate(per_s=1.0, burst=max(60, per + 10))}
    root = Path(tempfile.mkdtemp(prefix="fedfleet-bench-replicas-"))
    fleet = OtaFleet(
        root,
        devices=devices,
        database=database,
        replicas=names,
        broker_extra=SESSION_PER_USER,
        limits=Limits(rates=rates),
    )
    procs: list[ReplicaProcess] = []
    pubs: list[subprocess.Popen[bytes]] = []
    try:
        fleet.start(fleet_service=False, agents=False)
        procs = [ReplicaProcess(fleet, name) for name in names]
        wait_for(lambda: all(p.connected() for p in procs), timeout_s=120, what="replicas")
        time.sleep(1.0)  # their shared subscriptions in place
        lines = _payloads(per)
        cpu0 = [_cpu_s(p) for p in procs]
        began = time.perf_counter()
        for device in fleet.devices:
            pub = subprocess.Popen(
                [
                    *("mosquitto_pub", "-h", "127.0.0.1", "-p", str(fleet.broker.port)),
                    *("-u", device.device_id, "-P", device.password, "-i", device.device_id),
                    *("-q", "1", "-l", "-t", proto.topic(device.device_id, "telemetry")),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            assert pub.stdin is not None
            pub.stdin.write(lines)
            pub.stdin.close()
            pubs.append(pub)
        for pub in pubs:
            pub.wait(300)
        sent = per * devices
        deadline = time.monotonic() + 300
        while _stored(fleet) < sent and time.monotonic() < deadline:
            time.sleep(0.05)
        elapsed = time.perf_counter() - began
        cpu = [_cpu_s(p) - c for p, c in zip(procs, cpu0, strict=True)]
        time.sleep(1.0)  # anything stored twice would show now
        rows = _stored(fleet)
        failed = sum(1 for pub in pubs if pub.returncode != 0)
    finally:
        for pub in pubs:
            if pub.poll() is None:
                pub.kill()
                pub.wait()
        for proc in procs:
            proc.stop()
        fleet.close()
        shutil.rmtree(root, ignore_errors=True)
    rate = sent / elapsed
    per_msg = [c / (sent / replicas) * 1e6 for c in cpu]
    result = {
        "replicas": replicas,
        "sent": sent,
        "rows": rows,
        "rate": rate,
        "cpu_us_per_msg": sum(cpu) / sent * 1e6,
        "replica_cpu_s": cpu,
        "publishers_failed": failed,
    }
    lost = "nothing lost" if rows == sent else f"LOST/EXTRA {rows - sent:+d}"
    met = "met" if rate >= GOAL_RATE and rows == sent else "NOT met"
    print(
        f"replicas {replicas}: {sent} messages from {devices} devices -> {rows} rows "
        f"({lost}), {rate:,.0f} msg/s into PostgreSQL (goal {GOAL_RATE:,}: {met}); "
        f"replica CPU {', '.join(f'{c:.2f} s' for c in cpu)} = "
        f"{sum(cpu) / sent * 1e6:.0f} µs per message over all "
        f"(per replica, its even share: {', '.join(f'{u:.0f}' for u in per_msg)} µs); "
        f"load {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    return result
