"""OTA rollout and telemetry ingestion over a real Mosquitto on loopback.

``--broker nats`` runs the same over NATS with MQTT enabled (the clustered broker,
docs/scale-out.md), started from the ``nats.conf`` ``fleet broker-config --broker nats``
writes; its floor is the same ``mosquitto_pub``/``mosquitto_sub`` clients against NATS.

Part 1 — rollout. One signed int8 bundle of ``--size`` bytes (default 200 KB) is rolled
out to ``--devices`` simulated devices (default 1,000; real :class:`DeviceAgent`s, one
MQTT connection each, in ``--processes`` worker processes, default one per core, as the
floor's C clients use every core) in one wave, through the fleet's MQTT bridge:
each device asks for its chunks (the fleet publishes them once on the artifact's shared
topic; misses are repaired per device), checks every chunk's hash, verifies the bundle
(signature, hash, target), writes its inactive slot, self-tests the model with
onnxruntime and acknowledges. Measured from the rollout's creation:

(a) delivered — until every device's MQTT client has every chunk frame;
(a') transfer — until every device has every chunk hash-checked on its disk;
(b) installed — until every device has verified, self-tested, switched and acked.

(a) is when the last chunk frame reached every device's MQTT client, (a') when the
last device had hash-checked and written them all: (a') - (a) and (b) - (a') are
device CPU, not network — a thousand devices' chunk hashing, verify and onnxruntime
self-test run in K Python processes on this machine's cores. It is reported with
the cost of one install measured alone in the same process, so it can be read as
"N installs / cores". Nothing is cached across devices: each verifies its own file, and
the bench checks afterwards that every device runs a bundle with the right SHA-256.

The floor, in the same run, on the same broker: the same bytes fanned out by
Mosquitto's own C clients — one ``mosquitto_pub`` of the bundle to ``--devices``
``mosquitto_sub`` processes (QoS 1), from the publish until every subscriber exited.

Part 2 — telemetry. ``--telemetry`` messages published (QoS 1) as fast as they go by
the devices' own connections — every simulated device sends its share over its own
MQTT session, as in the field — and ingested by the bridge in batches; messages/s from
the first publish until the last row is in the database, and the row count (nothing may
be lost).

Poison (``--poison-rate R``): one more enrolled device (outside the rollout's group)
floods R poison messages a second — the payloads of tests/e2e/test_ota_isolation.py
(300 KB of nested ``[``, a 400-digit number, ``seq`` = 2^63, 2^70 ids, non-UTF-8; not
the 2 MB one, which the broker refuses by disconnecting the sender),
cycled over its heartbeat, telemetry, ack, status and chunk-req topics — through the
rollout and the telemetry part. The bench then reports the flood's rate, what the bridge
dropped for that device (poison, throttled), and checks that the rollout succeeded on
every device and no other device's telemetry was lost.

The devices fsync as real ones do; their slots ("flash") live in ``--state-dir``,
by default /dev/shm when it exists: one disk standing in for 1,000 devices' flash
would serialise their fsyncs and unlinks in one queue, which a real fleet with 1,000
flashes does not have. ``--state-dir /tmp`` measures that too.

Part 3 — the storage path alone: ``--telemetry`` pre-encoded messages through the
bridge's ``ingest_batch`` (decode, validate, write; batches of 1,000), no MQTT.

``--database postgresql://...`` puts the fleet in a fresh schema of that database
(dropped afterwards). ``--profile FILE`` writes a cProfile, in CPU seconds, of the fleet's
threads during the rollout and the telemetry. ``--before DIR`` (a checkout of older code,
e.g. ``git worktree add DIR COMMIT``) runs the bench on it and on this checkout, once per
``--database`` (``sqlite`` names SQLite), and prints the before/after table: the fleet's
CPU per device during the rollout (the bench's own driver thread left out) and the
telemetry rates, against the goals (0.2 ms per device; 20,000 messages/s into PostgreSQL).

    python bench/ota.py [--devices 1000] [--size 200000] [--telemetry 20000]
                        [--processes K] [--state-dir DIR] [--poison-rate R]
                        [--database URL] [--profile FILE] [--before DIR --database sqlite
                        --database postgresql://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import logging
import multiprocessing
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from sqlmodel import Session, func, select

# The repository before bench/ (whose simulation.py would shadow the simulation package
# that ota_testkit imports), and the end-to-end helpers before both. ``--code DIR`` (read
# here, before the imports) runs the fleet's code of another checkout — a worktree of an
# older commit, for a before/after in one run — with this checkout's bench and helpers.
sys.path.insert(
    0,
    str(
        Path(sys.argv[sys.argv.index("--code") + 1]).resolve()
        if "--code" in sys.argv[:-1]
        else Path(__file__).resolve().parents[1]
    ),
)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "e2e"))

from broker_process import NatsProcess
from ota_testkit import (
    POISONS,
    SIM_ACTOR,
    TARGET,
    OtaFleet,
    register_bundle,
    wait_for,
)

from edge_client.ota import SlotStore, install
from edge_client.protocol import mqtt as proto
from firmware_images.demo import build_demo_bundle
from firmware_images.keys import load_public_key
from fleet.crud.rollouts import create_rollout
from fleet.db import session_scope
from fleet.models.ota import Rollout, RolloutCreate, RolloutStatus, TelemetryRecord
from fleet.ota.broker_config import FLEET_USER
from fleet.ota.guard import DEFAULT_RATES, Limits, Rate

POISON_CHANNELS: tuple[proto.Channel, ...] = (
    "heartbeat",
    "telemetry",
    "ack",
    "status",
    "chunk-req",
)


class Poisoner:
    """One enrolled device publishing ``rate`` poison messages a second, cycling payloads
    and topics, from its own process (as a real device is: a flood sent from the bench's
    process would slow the bridge through the GIL and measure the attacker), until
    :meth:`stop`, which ends that process by its PID."""

    def __init__(self, *, port: int, device: Any, rate: float) -> None:
        context = multiprocessing.get_context("spawn")
        self.rate = rate
        self.device_id = device.device_id
        self._stop = context.Event()
        self._sent = context.Value("q", 0)
        self._elapsed = context.Value("d", 0.0)
        self._proc = context.Process(
            target=_flood,
            args=(port, device.device_id, device.password, rate),
            kwargs={"stop": self._stop, "sent": self._sent, "elapsed": self._elapsed},
            name="poisoner",
            daemon=True,
        )

    def start(self, *, timeout_s: float = 60.0) -> Poisoner:
        """Start the process and wait until its flood runs (the rollout starts after)."""
        self._proc.start()
        deadline = time.monotonic() + timeout_s
        while self.sent == 0:
            if not self._proc.is_alive():
                raise RuntimeError(f"the poisoner exited with code {self._proc.exitcode}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the poisoner sent nothing within {timeout_s} s")
            time.sleep(0.05)
        return self

    @property
    def sent(self) -> int:
        return int(self._sent.value)

    @property
    def elapsed(self) -> float:
        return float(self._elapsed.value)

    def stop(self) -> None:
        self._stop.set()
        self._proc.join(timeout=15)
        if self._proc.is_alive():  # its own PID, never by name
            self._proc.terminate()
            self._proc.join(timeout=5)


def _flood(port: int, device_id: str, password: str, rate: float, **shared: Any) -> None:
    """The poisoner process: its own broker session, ``rate`` messages/s (QoS 0)."""
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{device_id}-poison")
    client.username_pw_set(device_id, password)
    client.connect("127.0.0.1", port)
    client.loop_start()
    # Over the broker's max_packet_size a publish only gets the sender disconnected
    # (test_ota_isolation covers it): the flood sends what reaches the fleet.
    payloads = [v for v in POISONS.values() if len(v) <= proto.MAX_PACKET_BYTES]
    stop, sent = shared["stop"], 0
    began = time.perf_counter()
    while not stop.is_set():
        channel = POISON_CHANNELS[sent % len(POISON_CHANNELS)]
        payload = payloads[(sent // len(POISON_CHANNELS)) % len(payloads)]
        info = client.publish(proto.topic(device_id, channel), payload, qos=0)
        sent += info.rc == mqtt.MQTT_ERR_SUCCESS
        shared["sent"].value = sent
        ahead = began + sent / rate - time.perf_counter()
        if ahead > 0:
            stop.wait(ahead)
    shared["elapsed"].value = time.perf_counter() - began
    client.loop_stop()
    client.disconnect()


def _cpu_s(pid: int | None) -> float:
    """CPU seconds (user + system) a running process has used so far."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _self_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def raw_fanout(fleet: OtaFleet, *, data: bytes, subscribers: int) -> tuple[float, float, float]:
    """Seconds from one mosquitto_pub of ``data`` until ``subscribers`` mosquitto_sub exit;
    CPU seconds of the broker and of the Mosquitto clients meanwhile."""
    port = str(fleet.broker.port)
    topic = proto.topic("bench-raw", "cmd")
    auth = ["-u", FLEET_USER, "-P", fleet.fleet_password]
    payload = Path(tempfile.mkdtemp()) / "bundle.bin"
    payload.write_bytes(data)
    procs = [
        subprocess.Popen(
            [
                "mosquitto_sub",
                "-h",
                "127.0.0.1",
                "-p",
                port,
                *auth,
                "-t",
                topic,
                "-q",
                "1",
                "-C",
                "1",
                "-i",
                f"raw-{i}",
                "-N",
            ],
            stdout=subprocess.DEVNULL,
        )
        for i in range(subscribers)
    ]
    try:
        _wait_subscriptions(fleet, topic=topic, at_least=subscribers)
        broker_cpu, clients_cpu = _cpu_s(fleet.broker.pid), _children_cpu_s()
        began = time.perf_counter()
        subprocess.run(
            [
                "mosquitto_pub",
                "-h",
                "127.0.0.1",
                "-p",
                port,
                *auth,
                "-t",
                topic,
                "-q",
                "1",
                "-f",
                str(payload),
            ],
            check=True,
        )
        for proc in procs:
            proc.wait(timeout=600)
        elapsed = time.perf_counter() - began
        return (
            elapsed,
            _cpu_s(fleet.broker.pid) - broker_cpu,
            _children_cpu_s() - clients_cpu,
        )
    finally:
        for proc in procs:  # stopped by their own PIDs, whatever happened
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=10)
        shutil.rmtree(payload.parent, ignore_errors=True)


def _wait_subscriptions(fleet: OtaFleet, *, topic: str, at_least: int) -> None:
    """Wait until Mosquitto logged ``at_least`` subscriptions to ``topic`` (the broker runs
    with ``log_type subscribe``; its $SYS tree is closed to the fleet user by the ACL)."""
    if isinstance(fleet.broker, NatsProcess):
        # NATS logs no subscriptions: give every mosquitto_sub time to subscribe.
        time.sleep(3.0 + at_least / 100)
        return
    deadline = time.monotonic() + 300
    count = 0
    while time.monotonic() < deadline:
        text = fleet.broker.log.read_text(errors="replace")
        count = sum(1 for line in text.splitlines() if line.endswith(f" {topic}"))
        if count >= at_least:
            time.sleep(0.5)
            return
        time.sleep(0.2)
    raise RuntimeError(f"only {count} of {at_least} mosquitto_sub subscribed within 300 s")


def _fleet_cpu_s(fleet: OtaFleet) -> tuple[float, float]:
    """CPU seconds so far of this process (fleet bridge, controller; agents when K=1) and
    of the agents' worker processes (0 when K=1)."""
    pids = fleet.procs.pids if fleet.procs is not None else []
    return _self_cpu_s(), sum(_cpu_s(pid) for pid in pids)


def rollout(
    fleet: OtaFleet, *, data: bytes, sha256: str
) -> tuple[dict[str, float], dict[str, str]]:
    """Seconds from the rollout's creation: first command at a device, every device with
    all bytes, every device acked; and the median per-device install (queueing included).
    Second: the timeline, from the rollout's creation, of the install commands' arrival at
    the devices, the shared chunk requests' arrival at the fleet, and the shared
    publications (first/median/p99/last)."""
    assert fleet.bridge is not None
    model_id = register_bundle(fleet.engine, fleet.store, bundle=data, task="bench", target=TARGET)
    broker_cpu, (own_cpu, agents_cpu) = _cpu_s(fleet.broker.pid), _fleet_cpu_s(fleet)
    # This thread creates the rollout (the API's work) and polls for its end (the bench's):
    # neither is the fleet service's, so its CPU is left out of the fleet's.
    driver_cpu = time.thread_time()
    began, began_mono = time.perf_counter(), time.monotonic()
    with session_scope(fleet.engine, write=True) as session:
        rollout_id = create_rollout(
            session,
            RolloutCreate(
                model_version_id=model_id, group=fleet.group, waves=[100], ack_timeout_s=600
            ),
            actor=SIM_ACTOR,
        ).id

    def finished() -> bool:
        with Session(fleet.engine) as session:
            row = session.get(Rollout, rollout_id)
            return row is not None and row.status is not RolloutStatus.running

    wait_for(finished, timeout_s=1800, what="the rollout")
    total = time.perf_counter() - began
    own_after, agents_after = _fleet_cpu_s(fleet)
    own_after -= time.thread_time() - driver_cpu
    broker_cpu = _cpu_s(fleet.broker.pid) - broker_cpu
    own_cpu, agents_cpu = own_after - own_cpu, agents_after - agents_cpu
    with Session(fleet.engine) as session:
        row = session.get(Rollout, rollout_id)
        assert row is not None and row.status is RolloutStatus.succeeded, row
    # Every device really got the right bytes: it runs a bundle whose SHA-256 it computed
    # over its own downloaded file (and whose signature it verified) and acked "installed".
    # The rows come from every worker process.
    reports = fleet.reports()
    assert len(reports) == len(fleet.devices), (len(reports), len(fleet.devices))
    wrong = [r.device_id for r in reports if r.sha256 != sha256]
    assert not wrong, f"{len(wrong)} devices do not run the bundle: {wrong[:3]}"
    assert all(r.last_ack_ok and r.last_ack_stage == "installed" for r in reports)
    installs = sorted(r.timings["installed"] - r.timings["downloaded"] for r in reports)
    commands = sorted(r.timings["command"] - began_mono for r in reports)
    asked = sorted(t - began_mono for t in fleet.bridge.stats.shared_requests_at if t >= began_mono)
    published = [
        (t - began_mono, n) for t, n in fleet.bridge.stats.shared_published if t >= began_mono
    ]
    timeline = {
        "commands": _spread(commands),
        "asked": _spread(asked),
        "published": "; ".join(f"+{t:.2f} s: {n} chunks" for t, n in published[:6])
        + (f"; ... ({len(published)} in all)" if len(published) > 6 else ""),
    }
    return {
        "first_command": min(r.timings["command"] for r in reports) - began_mono,
        "delivered": max(r.last_frame_at for r in reports) - began_mono,
        "transfer": max(r.timings["downloaded"] for r in reports) - began_mono,
        "total": total,
        "install_median": installs[len(installs) // 2],
        "broker_cpu": broker_cpu,
        "own_cpu": own_cpu + agents_cpu,
        "fleet_cpu": own_cpu,
        "agents_cpu": agents_cpu,
        "dropped": sum(r.dropped_chunks for r in reports),
    }, timeline


def _spread(times: list[float]) -> str:
    """First, median, 99th percentile and last of sorted ``times`` (seconds)."""
    if not times:
        return "none"
    pick = [times[0], times[len(times) // 2], times[int(len(times) * 0.99)], times[-1]]
    return "/".join(f"{t:.2f}" for t in pick) + f" s ({len(times)})"


def one_install(fleet: OtaFleet, *, data: bytes, root: Path, repeats: int = 5) -> float:
    """Median seconds of one device's install alone (verify, slot write, self-test)."""
    times = []
    for i in range(repeats):
        store = SlotStore(
            root / f"alone-{i}",
            public_key=load_public_key(fleet.pubkey),
            target=TARGET,
            max_failed_starts=2,
            durable=True,  # as the simulated devices
        )
        bundle = root / f"alone-{i}.ffb"
        bundle.write_bytes(data)
        began = time.perf_counter()
        install(store, bundle_file=bundle, model_version_id=None)
        times.append(time.perf_counter() - began)
    return sorted(times)[len(times) // 2]


def telemetry(fleet: OtaFleet, *, messages: int) -> tuple[float, int, int]:
    """(messages/s into the database, rows stored, messages sent): every device publishes
    its share of ``messages`` over its own MQTT connection (QoS 1)."""
    per = max(1, messages // len(fleet.devices))
    with Session(fleet.engine) as session:
        before = session.exec(select(func.count()).select_from(TelemetryRecord)).one()
    began = time.perf_counter()
    if fleet.procs is not None:
        sent = fleet.procs.publish_telemetry(per)
    else:
        assert fleet.sim is not None
        sent = fleet.sim.publish_telemetry(per)
    expected = before + sent

    def stored() -> int:
        with Session(fleet.engine) as session:
            return int(session.exec(select(func.count()).select_from(TelemetryRecord)).one())

    deadline = time.monotonic() + 600
    while stored() < expected and time.monotonic() < deadline:
        time.sleep(0.1)
    elapsed = time.perf_counter() - began
    return sent / elapsed, stored() - before, sent


def storage(fleet: OtaFleet, *, messages: int) -> float:
    """Messages/s of the storage path alone: ``messages`` pre-encoded telemetry messages
    of the enrolled devices through the bridge's ``ingest_batch`` (decode, validate,
    write) in batches of 1,000, no MQTT; checks every row arrived."""
    bridge = fleet.bridge
    assert bridge is not None
    rounds = -(-messages // len(fleet.devices))
    features = tuple(proto.FeatureSummary(counts=(1, 5, 20, 50, 20, 3, 1)) for _ in range(4))
    frames = [
        (
            "msg",
            proto.topic(d.device_id, "telemetry"),
            proto.encode(
                proto.Telemetry(
                    seq=10_000_000 + i,
                    window_s=60.0,
                    count=100,
                    latency_p50_ms=1.5,
                    latency_p95_ms=3.2,
                    predictions={"0": 60, "1": 40},
                    features=features,
                )
            ),
        )
        for i in range(rounds)
        for d in fleet.devices
    ][:messages]
    rows = bridge.stats.telemetry_rows
    began = time.perf_counter()
    for first in range(0, len(frames), 1000):
        bridge.ingest_batch(frames[first : first + 1000])
    elapsed = time.perf_counter() - began
    assert bridge.stats.telemetry_rows - rows == len(frames), "storage path lost rows"
    return len(frames) / elapsed


def _fs_type(path: Path) -> str:
    """The file system type ``path`` is on (from /proc/mounts; "?" if unknown)."""
    try:
        mounts = [line.split() for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return "?"
    resolved, best, kind = str(path.resolve()), "", "?"
    for fields in mounts:
        point = fields[1]
        inside = resolved == point or resolved.startswith(point.rstrip("/") + "/")
        if len(fields) > 2 and inside and len(point) > len(best):
            best, kind = point, fields[2]
    return kind


def _default_state_dir() -> Path:
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())


class ThreadProfiles:
    """cProfile of every thread of this process started from now on, and of this one, in
    CPU seconds (``time.thread_time``): the fleet bridge's and controller's threads (the
    devices run in worker processes). :meth:`mark` reads every profiler's counters
    without stopping it; :meth:`write` prints the costs between two marks — one phase
    (the rollout, the telemetry) of a run."""

    def __init__(self) -> None:
        self._profiles: list[cProfile.Profile] = []
        self._original = threading.Thread.run
        original, profiles = self._original, self._profiles

        def run(thread: threading.Thread) -> None:
            profile = cProfile.Profile(time.thread_time)
            profiles.append(profile)
            profile.enable()
            try:
                original(thread)
            finally:
                profile.disable()

        threading.Thread.run = run  # type: ignore[method-assign]
        main_thread = cProfile.Profile(time.thread_time)
        profiles.append(main_thread)
        main_thread.enable()

    def mark(self) -> dict[str, tuple[int, float, float]]:
        """``{function: (calls, own s, cumulative s)}`` summed over the threads so far."""
        totals: dict[str, tuple[int, float, float]] = {}
        for profile in list(self._profiles):
            for entry in profile.getstats():  # type: ignore[attr-defined]
                code = entry.code
                name = (
                    f"{code.co_filename.rsplit('/', 2)[-1]}:{code.co_firstlineno}({code.co_name})"
                    if hasattr(code, "co_filename")
                    else str(code)
                )
                calls, own, cum = totals.get(name, (0, 0.0, 0.0))
                totals[name] = (
                    calls + entry.callcount,
                    own + entry.inlinetime,
                    cum + entry.totaltime,
                )
        return totals

    def stop(self) -> None:
        threading.Thread.run = self._original  # type: ignore[method-assign]

    @staticmethod
    def write(
        out: Path, title: str, before: dict[str, tuple[int, float, float]], after: dict
    ) -> None:
        delta = {
            name: (
                c - before.get(name, (0, 0.0, 0.0))[0],
                o - before.get(name, (0, 0.0, 0.0))[1],
                t - before.get(name, (0, 0.0, 0.0))[2],
            )
            for name, (c, o, t) in after.items()
        }
        own_total = sum(o for _c, o, _t in delta.values())
        with out.open("a") as stream:
            stream.write(f"== {title}: {own_total:.3f} CPU s in all (profiled)\n")
            for key, label in ((1, "own"), (2, "cumulative")):
                stream.write(f"-- top by {label} CPU s\n{'calls':>9} {'own s':>8} {'cum s':>8}\n")
                top = sorted(delta.items(), key=lambda kv: -kv[1][key])[:35]
                for name, (calls, own, cum) in top:
                    stream.write(f"{calls:>9} {own:>8.3f} {cum:>8.3f}  {name}\n")


def compare(args: argparse.Namespace, databases: list[str]) -> None:
    """Run this bench on the code of ``args.before`` and on this checkout, on each of
    ``databases``, one child process each, and print the before/after table."""
    here = Path(__file__).resolve()
    results: dict[tuple[str, str], dict[str, float]] = {}
    load0 = " ".join(f"{x:.2f}" for x in os.getloadavg())
    for code_name, code in (("before", args.before.resolve()), ("after", here.parents[1])):
        for database in databases:
            out = Path(tempfile.mkstemp(suffix=".json")[1])
            command = [sys.executable, str(here), "--code", str(code), "--json", str(out)]
            command += ["--devices", str(args.devices), "--telemetry", str(args.telemetry)]
            command += ["--processes", str(args.processes), "--size", str(args.size)]
            command += ["--database", database] if database != "sqlite" else []
            print(f"== {code_name} ({code}) on {_db_name(database)}", flush=True)
            subprocess.run(command, check=True)
            results[code_name, database] = json.loads(out.read_text())
            out.unlink()
    load1 = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print()
    print(
        f"before: {args.before}; after: this checkout; {args.devices} devices, "
        f"{args.telemetry} telemetry messages; load average before/after: {load0} / {load1} "
        f"on {os.cpu_count()} cores (CPU seconds are what count)"
    )
    print(f"{'measure':<52}{'before':>11}{'after':>11}{'goal':>10}  verdict")
    for database in databases:
        name = _db_name(database)
        b, a = results["before", database], results["after", database]
        ms_b, ms_a = b["fleet_cpu_ms_per_device"], a["fleet_cpu_ms_per_device"]
        row = f"rollout fleet CPU ms/device ({name})"
        verdict = "met" if ms_a <= 0.2 else "not met"
        print(f"{row:<52}{ms_b:>11.3f}{ms_a:>11.3f}{'<= 0.2':>10}  {verdict}")
        row = f"telemetry msg/s into {name} (lost b/a: {b['lost']}/{a['lost']})"
        goal = "met" if a["telemetry_rate"] >= 20_000 and a["lost"] == 0 else "not met"
        rate_b, rate_a = b["telemetry_rate"], a["telemetry_rate"]
        print(
            f"{row:<52}{rate_b:>11,.0f}{rate_a:>11,.0f}{'>= 20000':>10}  "
            + (goal if database != "sqlite" else "(goal is PostgreSQL's)")
        )
        row = f"  storage path alone (decode + write), {name}"
        rate_b, rate_a = b["storage_rate"], a["storage_rate"]
        goal = "met" if rate_a >= 20_000 else "not met"
        print(
            f"{row:<52}{rate_b:>11,.0f}{rate_a:>11,.0f}{'>= 20000':>10}  "
            + (goal if database != "sqlite" else "(goal is PostgreSQL's)")
        )


def _db_name(database: str) -> str:
    return "SQLite" if database == "sqlite" else "PostgreSQL"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument(
        "--broker",
        choices=("mosquitto", "nats"),
        default="mosquitto",
        help="the broker, started from the config `fleet broker-config --broker` writes",
    )
    parser.add_argument("--size", type=int, default=200_000, help="bundle bytes")
    parser.add_argument("--telemetry", type=int, default=20_000, help="telemetry messages")
    parser.add_argument(
        "--processes",
        type=int,
        default=os.cpu_count() or 1,
        help="worker processes the simulated devices run in (default: one per core)",
    )
    parser.add_argument(
        "--poison-rate",
        type=float,
        default=0.0,
        help="poison messages/s one extra device floods during the run (0: none)",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=_default_state_dir(),
        help="where the devices' slots live (default /dev/shm when present: see below)",
    )
    parser.add_argument(
        "--database",
        action="append",
        default=None,
        help="a PostgreSQL URL (e.g. postgresql://postgres@127.0.0.1:5432/test): the fleet "
        "lives in a fresh schema there, dropped afterwards (default: a SQLite file); "
        "with --before, may be given with 'sqlite' to compare on both",
    )
    parser.add_argument(
        "--before",
        type=Path,
        default=None,
        help="a checkout of older code (git worktree add DIR COMMIT): run the bench on it "
        "and on this checkout, and print the before/after table",
    )
    parser.add_argument(
        "--replicas",
        default=None,
        help="e.g. 1,2,3: only telemetry, over that many `fleet mqtt --replica` processes "
        "into --database (PostgreSQL), once per count (bench/ota_replicas.py)",
    )
    parser.add_argument("--code", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, default=None, help="write the numbers here")
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="write a cProfile (CPU seconds) of this process's threads (the fleet) here",
    )
    args = parser.parse_args()
    databases = args.database or ["sqlite"]
    if args.replicas is not None or args.before is not None:
        other_mode(parser, args, databases)
        return
    if len(databases) > 1:
        parser.error("--database once, unless --before compares on several")
    database = None if databases[0] == "sqlite" else databases[0]
    if args.processes < 1:
        parser.error("--processes must be at least 1")
    if args.poison_rate < 0:
        parser.error("--poison-rate must be >= 0 messages/s (0: no flood)")
    if not args.state_dir.is_dir():
        parser.error(f"--state-dir {args.state_dir} is not a folder; create it or pick another")
    logging.basicConfig(level=logging.ERROR)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # run the clean-up below
    root = Path(tempfile.mkdtemp(prefix="fedfleet-bench-ota-"))
    state = Path(tempfile.mkdtemp(prefix="fedfleet-bench-ota-devices-", dir=args.state_dir))
    state_fs = _fs_type(state)
    t0 = time.perf_counter()
    load0 = " ".join(f"{x:.2f}" for x in os.getloadavg())

    def say(text: str) -> None:
        print(f"[{time.perf_counter() - t0:7.1f} s] {text}", flush=True)

    say(
        f"enrolling {args.devices} devices and starting {args.broker}; devices run in "
        f"{args.processes} processes, their flash in {state} ({state_fs}) ..."
    )
    log_types = "\n".join(
        f"log_type {t}" for t in ("error", "warning", "notice", "information", "subscribe")
    )
    # Each device publishes its share of --telemetry at once: its telemetry burst allows it
    # (the bench measures ingestion, not the per-device limit, which has its own test).
    share = -(-args.telemetry // args.devices)
    rates = {**DEFAULT_RATES, "telemetry": Rate(per_s=1.0, burst=max(60, share + 10))}
    fleet = OtaFleet(
        root,
        devices=args.devices,
        chunk_size=64 * 1024,
        broker_extra=log_types,
        limits=Limits(rates=rates),
        spares=1 if args.poison_rate > 0 else 0,
        broker=args.broker,
        database=database,
    )
    profiles = ThreadProfiles() if args.profile is not None else None
    poisoner: Poisoner | None = None
    try:
        # chunk_timeout_s: a chunk unanswered this long is asked for again on the
        # device's own topic; above the simulator's worst inbox lag, so only real misses
        # are repaired. durable: every device fsyncs as a real one does.
        fleet.start(
            heartbeat_s=60.0,
            telemetry_s=3600.0,
            chunk_timeout_s=10.0,
            processes=args.processes,
            durable=True,
            device_root=state,
        )
        wait_for(
            lambda: all(r.connected for r in fleet.reports()), timeout_s=300, what="connections"
        )
        bundle = build_demo_bundle(private_key=fleet.key, version="bench-v1", pad_to=args.size)
        say(f"bundle: {len(bundle.data)} bytes; raw fan-out with mosquitto_pub/sub ...")
        floor, floor_broker_cpu, floor_clients_cpu = raw_fanout(
            fleet, data=bundle.data, subscribers=args.devices
        )
        if args.poison_rate > 0:
            say(f"one device floods {args.poison_rate:g} poison messages/s from now on ...")
            poisoner = Poisoner(
                port=fleet.broker.port, device=fleet.spares[0], rate=args.poison_rate
            ).start()
        say("rollout through the fleet ...")
        marks = [profiles.mark()] if profiles is not None else []
        times, timeline = rollout(fleet, data=bundle.data, sha256=bundle.sha256)
        marks += [profiles.mark()] if profiles is not None else []
        bridge = fleet.bridge
        assert bridge is not None
        served, shared = bridge.stats.chunks_served, bridge.stats.chunks_shared
        dropped = int(times["dropped"])
        alone = one_install(fleet, data=bundle.data, root=state)
        say("telemetry ingestion ...")
        marks += [profiles.mark()] if profiles is not None else []
        rate, rows, sent = telemetry(fleet, messages=args.telemetry)
        marks += [profiles.mark()] if profiles is not None else []
        stored_rate = storage(fleet, messages=args.telemetry)
        if poisoner is not None:
            poisoner.stop()
        alive = bridge.alive  # every bridge thread still running, before the stop
        say("stopping")
    finally:
        if poisoner is not None:
            poisoner.stop()
        fleet.close()
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(state, ignore_errors=True)
    if profiles is not None:
        profiles.stop()
        args.profile.write_text("")
        profiles.write(args.profile, f"rollout to {args.devices} devices", marks[0], marks[1])
        profiles.write(args.profile, f"telemetry, {sent} messages", marks[2], marks[3])
    if args.json is not None:
        fleet_ms = times["fleet_cpu"] / args.devices * 1000
        numbers = {
            "fleet_cpu_ms_per_device": fleet_ms,
            "telemetry_rate": rate,
            "storage_rate": stored_rate,
        }
        args.json.write_text(json.dumps({**numbers, "rows": rows, "lost": sent - rows}))
    cores = os.cpu_count() or 1
    chunks = -(-len(bundle.data) // (64 * 1024))
    transfer, total = times["transfer"], times["total"]
    print()
    print(
        f"OTA: {len(bundle.data)} B bundle to {args.devices} devices over {args.broker} (loopback)"
    )
    print(
        f"devices: K = {args.processes} worker process(es) on {cores} cores; every device "
        f"fsyncs as on real hardware; their flash: {args.state_dir} ({state_fs})"
    )
    if state_fs != "tmpfs":
        print(
            "  note: ONE disk stands in for every device's flash here, so their fsyncs "
            "queue behind each other (a real fleet has one flash per device); "
            "--state-dir /dev/shm measures without that"
        )
    print(f"load average before/after: {load0} / {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'path':<62}{'seconds':>9}{'x floor':>9}")
    print(f"{'raw fan-out: mosquitto_pub -> N x mosquitto_sub':<62}{floor:>9.2f}{1.0:>9.2f}")
    delivered = times["delivered"]
    row = "(a) fedfleet: rollout created -> all bytes at every device"
    print(f"{row:<62}{delivered:>9.2f}{delivered / floor:>9.2f}")
    row = "(a') ... -> every chunk hash-checked on every device's disk"
    print(f"{row:<62}{transfer:>9.2f}{transfer / floor:>9.2f}")
    row = "(b) fedfleet: ... -> all verified, self-tested, switched, acked"
    print(f"{row:<62}{total:>9.2f}{total / floor:>9.2f}")
    print(
        f"  first install command at a device after {times['first_command']:.2f} s; "
        f"chunk frames published {served} ({shared} on the shared topic) for "
        f"{chunks} chunks x {args.devices} devices; {dropped} shared frames dropped "
        "by devices (memory bound) and repaired"
    )
    print(
        "  timeline from the rollout's creation (first/median/p99/last): install command at "
        f"the devices {timeline['commands']}; shared chunk requests at the fleet "
        f"{timeline['asked']}; shared publications {timeline['published']}"
    )
    print(
        f"  CPU seconds: broker {floor_broker_cpu:.2f} for the raw fan-out vs "
        f"{times['broker_cpu']:.2f} for the rollout; the {args.devices} mosquitto_sub "
        f"{floor_clients_cpu:.2f} vs the fleet + {args.devices} Python agents in "
        f"{args.processes} process(es) {times['own_cpu']:.2f}"
        + (
            f" (the fleet's bridge and controller threads {times['fleet_cpu']:.2f} = "
            f"{times['fleet_cpu'] / args.devices * 1000:.2f} ms per device, "
            f"the device worker processes {times['agents_cpu']:.2f}: "
            f"{times['agents_cpu'] / args.devices * 1000:.1f} ms per device)"
            if args.processes > 1
            else ""
        )
    )
    print(
        f"  (b)-(a') = {total - transfer:.2f} s of device-side CPU: one install alone takes "
        f"{alone * 1000:.1f} ms here, {args.devices} x that / {cores} cores = "
        f"{args.devices * alone / cores:.2f} s; median per device in the crowd "
        f"{times['install_median']:.2f} s (queueing included)"
    )
    print()
    print(
        f"telemetry: {sent} messages from {args.devices} device connections -> {rows} rows "
        f"stored ({'nothing lost' if rows == sent else f'LOST {sent - rows}'}), "
        f"{rate:,.0f} messages/s sustained into {_db_name(databases[0])}; the storage path "
        f"alone (ingest_batch: decode + write, no MQTT) {stored_rate:,.0f} messages/s"
    )
    if poisoner is not None:
        _print_poison(poisoner, bridge, fleet, lost=sent - rows, alive=alive)


def other_mode(parser: argparse.ArgumentParser, args: argparse.Namespace, dbs: list[str]) -> None:
    """``--replicas`` (telemetry over replicas) or ``--before`` (the before/after table)."""
    if args.replicas is not None:
        replica_runs(parser, args, dbs)
        return
    if not (args.before / "fleet" / "ota" / "bridge.py").is_file():
        parser.error(f"--before {args.before} is not a fedfleet checkout")
    compare(args, dbs)


def replica_runs(parser: argparse.ArgumentParser, args: argparse.Namespace, dbs: list[str]) -> None:
    """``--replicas 1,2,3``: the telemetry part over N replicas, once per N."""
    try:
        counts = [int(n) for n in args.replicas.split(",")]
    except ValueError:
        parser.error(f"--replicas {args.replicas!r}: give counts, e.g. --replicas 1,2,3")
    if not counts or min(counts) < 1 or max(counts) > 16:
        parser.error("--replicas: counts of 1 to 16 processes, e.g. --replicas 1,2,3")
    if len(dbs) != 1 or not dbs[0].startswith("postgresql"):
        parser.error("--replicas needs one --database postgresql://... (replicas share it)")
    import ota_replicas

    logging.basicConfig(level=logging.ERROR)
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for count in counts:
        ota_replicas.run(
            replicas=count, devices=args.devices, messages=args.telemetry, database=dbs[0]
        )


def _print_poison(
    poisoner: Poisoner, bridge: Any, fleet: OtaFleet, *, lost: int, alive: bool
) -> None:
    guard = bridge.stats.guard
    bad = poisoner.device_id
    others = {d.device_id for d in fleet.devices}
    hit = sorted(d for d in others if guard.poison[d] or guard.throttled[d] or guard.dropped[d])
    print()
    print(f"{'poison flood (one device, 5 topics, 7 payloads)':<52}{'value':>14}")
    for label, value in (
        ("flood rate asked (messages/s)", f"{poisoner.rate:g}"),
        ("flood rate achieved (messages/s)", f"{poisoner.sent / poisoner.elapsed:,.1f}"),
        ("poison messages sent", f"{poisoner.sent}"),
        ("dropped as poison (decoded, refused)", f"{guard.poison[bad]}"),
        ("dropped by its rate limits", f"{guard.throttled[bad]}"),
        ("dropped: queues full", f"{guard.dropped[bad]}"),
        ("bridge threads alive at the end", f"{alive}"),
        ("other devices with a message dropped", f"{len(hit)}"),
        ("other devices' telemetry lost", f"{lost}"),
        ("rollout", f"succeeded, {len(fleet.devices)} devices"),
    ):
        print(f"{label:<52}{value:>14}")


if __name__ == "__main__":
    main()
