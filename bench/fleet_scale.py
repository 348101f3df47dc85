"""Fleet at scale (issue 16), in one run: the API table, telemetry into PostgreSQL, the
rollout's fleet-side CPU per device, and N device connections held at once.

Parts (``--parts``, default all), each printed with the machine's load before and after:

``api``
    ``bench/fleet_api.py`` (its own functions, run as a child): list and heartbeat on
    SQLite and PostgreSQL with one ``fleet serve`` worker, and PostgreSQL with
    ``--api-workers`` (default 2) workers beside it (``fleet serve --workers N``).
``ota``
    ``bench/ota.py --database postgresql://...``: the rollout's fleet-process CPU per
    device and the telemetry rate into PostgreSQL (nothing lost).
``connections``
    For each step of ``--steps`` (default: 10,000 and ``--connections``): a fresh
    PostgreSQL database (``conn_scale``, or ``$FEDFLEET_SCALE_DB``; dropped and created),
    N devices **seeded
    directly into the database** (bench set-up, labelled: one INSERT, one shared
    password hash, no audit events — enrolling 100,000 devices through the API is not
    what is measured), ``fedfleet fleet broker-config`` (per-device credentials + ACL),
    Mosquitto started from its ``mosquitto.conf`` (``max_connections -1``, open-file
    limit raised to the hard limit), ``fedfleet fleet mqtt`` on that database, then
    ``bench/mqtt_swarm.py`` opens N authenticated connections (status, heartbeats every
    ``--heartbeat-s``, subscription to each device's ``cmd``). Measured: time to connect
    all, every device's heartbeat stored (``devices.last_seen_at`` after the swarm was
    up), one rollout's install command at every connection, RSS and CPU of the broker(s),
    ``fleet mqtt`` and the swarm.

    One Mosquitto process holds at most its open-file hard limit of connections (20,000
    on this machine: ``ulimit -Hn``, not raisable here). Above ``--per-broker`` (default
    18,000) the step runs **bridged Mosquittos**: K edge brokers with the same
    credentials and ACL, each bridged (``connection`` section: uplink topics out,
    ``cmd``/``chunk``/artifact topics in) to one core broker the fleet connects to. The
    first step also probes one Mosquitto past its limit (``--probe``) and says where it
    stopped.

    python bench/fleet_scale.py [--parts api,ota,connections] [--connections 100000]
                                [--steps 10000,100000] [--heartbeat-s 60]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests" / "e2e"))
sys.path.insert(0, str(HERE))

from broker_process import MosquittoProcess, free_port  # noqa: E402
from mqtt_swarm import Swarm, raise_nofile  # noqa: E402
from proc_tree import rss_bytes  # noqa: E402

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
# The connection run's own database (dropped and created per step); --db-name changes it.
DB_NAME = os.environ.get("FEDFLEET_SCALE_DB", "conn_scale")
PG_URL = f"postgresql://postgres@127.0.0.1:5432/{DB_NAME}"
TARGET = "cpu-x86"
GOAL_CONNECTIONS = 100_000
T0 = time.perf_counter()


def say(text: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f} s] {text}", flush=True)


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def cpu_s(pid: int | None) -> float:
    """User + system CPU seconds of ``pid`` (0 once it is gone)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fedfleet() -> list[str]:
    exe = Path(sys.executable).with_name("fedfleet")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "fedfleet"]


# --- the connection run -----------------------------------------------------------------


def fresh_database() -> None:
    import psycopg

    with psycopg.connect(
        "host=127.0.0.1 port=5432 dbname=postgres user=postgres", autocommit=True
    ) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DB_NAME}")


def seed_devices(n: int) -> tuple[list[tuple[str, str]], str]:
    """Bench set-up, not the API: migrate, insert ``n`` devices in one group with one
    shared broker password (its ``$7$`` hash, as enrollment stores it). Returns the
    credentials and the group's name."""
    from sqlalchemy import insert

    from fleet import migrate
    from fleet.credentials import mosquitto_hash
    from fleet.db import make_engine
    from fleet.models.common import utcnow
    from fleet.models.devices import Device, Group

    engine = make_engine(PG_URL)
    migrate.upgrade(engine)
    password = secrets.token_urlsafe(24)
    hashed = mosquitto_hash(password)
    now = utcnow()
    ids = [f"dev-{i:016x}" for i in range(n)]
    with engine.begin() as connection:
        connection.execute(
            insert(Group), [{"id": 1, "name": "swarm", "description": "", "created_at": now}]
        )
        for first in range(0, n, 20_000):
            connection.execute(
                insert(Device),
                [
                    {
                        "id": d,
                        "name": f"swarm-{i:06d}",
                        "hardware_target": TARGET,
                        "group_id": 1,
                        "mqtt_username": d,
                        "mqtt_password_hash": hashed,
                        "enrolled_at": now,
                        "enrolled_by": "bench-seed",
                    }
                    for i, d in enumerate(ids[first : first + 20_000], start=first)
                ],
            )
    engine.dispose()
    return [(d, password) for d in ids], "swarm"


BRIDGE_TOPICS = [
    *(f"topic fedfleet/v1/dev/+/{c} out 1" for c in ("status", "heartbeat", "telemetry", "ack")),
    "topic fedfleet/v1/dev/+/chunk-req out 1",
    "topic fedfleet/v1/dev/+/cmd in 1",
    "topic fedfleet/v1/dev/+/chunk in 1",
    "topic fedfleet/v1/artifacts/+/chunk in 1",
]


@dataclass
class Brokers:
    core: MosquittoProcess
    edges: list[MosquittoProcess]
    tls_ports: dict[int, int]  # plain port -> TLS port of the same broker
    tls: bool

    @property
    def device_ports(self) -> list[int]:
        plain = [e.port for e in self.edges] or [self.core.port]
        return [self.tls_ports[p] for p in plain] if self.tls else plain

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in [self.core, *self.edges] if p.pid is not None]

    def close(self) -> None:
        for broker in [*self.edges, self.core]:
            broker.close()


def _conf_for(base: str, *, port: int, tls_port: int, extra: list[str]) -> str:
    """``base`` (broker-config's mosquitto.conf) on ``port`` (and its TLS listener, when
    it has one, on ``tls_port``), with no connection limit and ``extra`` lines."""
    lines, seen = [], 0
    for line in base.splitlines():
        if line.startswith("listener "):
            line = f"listener {port if seen == 0 else tls_port} 127.0.0.1"
            seen += 1
        lines.append(line)
    return "\n".join([*lines, "max_connections -1", *extra]) + "\n"


def pattern_acl(path: Path) -> None:
    """``--acl pattern`` (the default): broker-config's ACL as it is. It used to write a
    ``user <id>`` / ``topic read <artifacts>`` pair per device, which Mosquitto 2.0 loads
    in O(n^2) (minutes at 100,000 devices); this rewrote them into one ``pattern read``
    line. broker-config now writes that line itself (docs/mqtt.md), so this only checks
    it is there."""
    if "pattern read fedfleet/v1/artifacts/+/chunk" not in path.read_text():
        raise RuntimeError(f"{path}: broker-config's artifact pattern line is missing")


def start_brokers(
    folder: Path, edges: int, *, tls: bool = False, acl_pattern: bool = False
) -> Brokers:
    """One Mosquitto (``edges == 0``) or a core plus ``edges`` bridged edge brokers, all
    from the files ``fleet broker-config`` wrote into ``folder``."""
    from fleet.credentials import mosquitto_hash

    base = (folder / "mosquitto.conf").read_text()
    if acl_pattern:
        pattern_acl(folder / "acl")
    bridges = [(f"bridge-{k}", secrets.token_urlsafe(18)) for k in range(edges)]
    if bridges:  # bridge users: read/write the fleet's topics on the core, like the fleet
        with open(folder / "passwd", "a") as f:
            f.writelines(f"{u}:{mosquitto_hash(p)}\n" for u, p in bridges)
        acl = (folder / "acl").read_text()
        head = "".join(f"user {u}\ntopic readwrite fedfleet/v1/#\n" for u, _ in bridges)
        (folder / "acl").write_text(head + acl)
    core_port = free_port()
    tls_ports = {core_port: free_port()}
    core_conf = folder / "core.conf"
    core_conf.write_text(_conf_for(base, port=core_port, tls_port=tls_ports[core_port], extra=[]))
    # A broker reads its passwd and ACL (one entry per device) before it listens: with
    # 100,000 devices that takes seconds; the edges start at once, in threads.
    core = MosquittoProcess(config=core_conf, port=core_port).start(timeout_s=300)
    out = []
    for k, (user, password) in enumerate(bridges):
        port = free_port()
        tls_ports[port] = free_port()
        conf = folder / f"edge-{k}.conf"
        bridge = [
            f"connection edge-{k}",
            f"address 127.0.0.1:{core_port}",
            f"remote_username {user}",
            f"remote_password {password}",
            f"remote_clientid {user}",
            "cleansession true",
            "bridge_protocol_version mqttv311",
            *BRIDGE_TOPICS,
        ]
        conf.write_text(_conf_for(base, port=port, tls_port=tls_ports[port], extra=bridge))
        os.chmod(conf, 0o644)
        out.append(MosquittoProcess(config=conf, port=port))
    with ThreadPoolExecutor(max_workers=max(1, len(out))) as pool:
        list(pool.map(lambda b: b.start(timeout_s=300), out))
    return Brokers(core=core, edges=out, tls_ports=tls_ports, tls=tls)


def self_signed(root: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key (PEM, readable by the broker)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedfleet-bench")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = root / "cert.pem", root / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    os.chmod(key_path, 0o644)  # the broker drops to the mosquitto user; a throwaway key
    return cert_path, key_path


def _count_seen(engine: Any, since: Any) -> int:
    from sqlmodel import Session, col, func, select

    from fleet.models.devices import Device

    with Session(engine) as session:
        return session.exec(
            select(func.count()).select_from(Device).where(col(Device.last_seen_at) >= since)
        ).one()


def _wait(pred: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.5)
    return pred()


def _rss_mb(pids: list[int]) -> float:
    return sum(rss_bytes(p) for p in pids) / 2**20


@dataclass
class StepResult:
    n: int
    layout: str
    connected: int
    connect_s: float
    seen: int
    seen_s: float
    installs: int
    install_s: float
    broker_rss_mb: float
    broker_rss_idle_mb: float
    broker_cpu_s: float
    fleet_rss_mb: float
    fleet_cpu_rollout_s: float
    fleet_cpu_total_s: float
    swarm_rss_mb: float
    swarm_cpu_s: float
    errors: list[str]


def connection_step(n: int, args: argparse.Namespace) -> StepResult:
    from fleet.db import make_engine
    from fleet.models.common import utcnow

    root = Path(tempfile.mkdtemp(prefix="fedfleet-scale-"))
    os.chmod(root, 0o755)
    edges = 0 if n <= args.per_broker else -(-n // args.per_broker)
    layout = "1 Mosquitto" if not edges else f"{edges} edge Mosquittos bridged to 1 core"
    layout += (", TLS" if args.tls else ", plain") + f", ACL {args.acl}"
    say(f"--- {n:,} connections ({layout}); seeding the database directly (bench set-up) ...")
    fresh_database()
    creds, group = seed_devices(n)
    env = {
        **os.environ,
        "FEDFLEET_FLEET_DATABASE_URL": PG_URL,
        "FEDFLEET_FLEET_ARTIFACT_DIR": str(root / "artifacts"),
        "FEDFLEET_FLEET_DATA_DIR": str(root / "data"),
    }
    broker_dir = root / "broker"
    tls = self_signed(root) if args.tls else None
    subprocess.run(
        [*fedfleet(), "fleet", "broker-config", "--out", str(broker_dir)]
        + (["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])] if tls else []),
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    os.chmod(broker_dir, 0o755)
    t = time.perf_counter()
    brokers = start_brokers(
        broker_dir, edges, tls=tls is not None, acl_pattern=args.acl == "pattern"
    )
    say(f"brokers listening after {time.perf_counter() - t:.1f} s (ACL: {args.acl})")
    fleet_log = open(root / "fleet-mqtt.log", "wb")  # noqa: SIM115 - closed below
    fleet = subprocess.Popen(
        [
            *fedfleet(),
            "fleet",
            "mqtt",
            "--broker-port",
            str(brokers.core.port),
            "--password-file",
            str(broker_dir / "fleet.pass"),
        ],
        env=env,
        stdout=fleet_log,
        stderr=subprocess.STDOUT,
    )
    engine = make_engine(PG_URL)
    swarm: Swarm | None = None
    try:
        time.sleep(2)
        if fleet.poll() is not None:
            raise RuntimeError(f"fleet mqtt exited: {(root / 'fleet-mqtt.log').read_text()}")
        idle_rss = _rss_mb(brokers.pids)
        cpu0 = sum(cpu_s(p) for p in brokers.pids)
        fleet_cpu0 = cpu_s(fleet.pid)
        processes = max(2, -(-n // 15_000))
        swarm = Swarm(
            creds,
            ports=brokers.device_ports,
            processes=processes,
            source_ips=max(2, -(-n // 20_000)),
            heartbeat_s=args.heartbeat_s,
            tls_ca=tls[0] if tls else None,
        ).start()
        t = time.perf_counter()
        try:
            stats = swarm.wait(
                lambda s: s.connected + s.refused + s.failed >= n,
                timeout_s=args.connect_timeout_s,
                what=f"{n} connections",
            )
        except AssertionError as err:
            say(f"not all connected: {err}"[:600])
            stats = swarm.stats()
        connect_s = time.perf_counter() - t
        say(f"connected {stats.connected:,} of {n:,} in {connect_s:.1f} s; load {load()}")
        since = utcnow()
        t = time.perf_counter()
        _wait(lambda: _count_seen(engine, since) >= stats.connected, args.heartbeat_s * 2 + 60)
        seen, seen_s = _count_seen(engine, since), time.perf_counter() - t
        say(f"heartbeats stored for {seen:,} devices {seen_s:.1f} s after all were up")
        broker_rss = _rss_mb(brokers.pids)
        # One rollout to the group: every device gets an install command.
        installs, install_s, fleet_cpu_rollout = rollout_to(engine, root, group, swarm, fleet.pid)
        stats = swarm.stats()
        return StepResult(
            n=n,
            layout=layout,
            connected=stats.connected,
            connect_s=connect_s,
            seen=seen,
            seen_s=seen_s,
            installs=installs,
            install_s=install_s,
            broker_rss_mb=broker_rss,
            broker_rss_idle_mb=idle_rss,
            broker_cpu_s=sum(cpu_s(p) for p in brokers.pids) - cpu0,
            fleet_rss_mb=_rss_mb([fleet.pid]),
            fleet_cpu_rollout_s=fleet_cpu_rollout,
            fleet_cpu_total_s=cpu_s(fleet.pid) - fleet_cpu0,
            swarm_rss_mb=_rss_mb(swarm.pids),
            swarm_cpu_s=sum(cpu_s(p) for p in swarm.pids),
            errors=stats.errors,
        )
    finally:
        if swarm is not None:
            swarm.stop()
        fleet.terminate()
        try:
            fleet.wait(timeout=30)
        except subprocess.TimeoutExpired:
            fleet.kill()
            fleet.wait()
        fleet_log.close()
        brokers.close()
        engine.dispose()
        shutil.rmtree(root, ignore_errors=True)


def rollout_to(
    engine: Any, root: Path, group: str, swarm: Swarm, fleet_pid: int
) -> tuple[int, float, float]:
    """Register a bundle, create one single-wave rollout to ``group``; wait until every
    connection got its install command. (devices with one, seconds, fleet CPU s)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from ota_testkit import SIM_ACTOR, register_bundle

    from firmware_images.demo import build_demo_bundle
    from fleet.artifacts import ArtifactStore
    from fleet.crud.rollouts import create_rollout
    from fleet.db import session_scope
    from fleet.models.ota import RolloutCreate

    bundle = build_demo_bundle(private_key=Ed25519PrivateKey.generate(), version="s1", seed=1)
    store = ArtifactStore(root / "artifacts")
    model_id = register_bundle(engine, store, bundle=bundle.data, task="t", target=TARGET)
    target = swarm.stats().connected
    cpu0 = cpu_s(fleet_pid)
    t = time.perf_counter()
    with session_scope(engine, write=True) as session:
        create_rollout(
            session,
            RolloutCreate(model_version_id=model_id, group=group, waves=[100]),
            actor=SIM_ACTOR,
        )
    say(f"rollout created in {time.perf_counter() - t:.1f} s; waiting for the install commands")
    _wait(lambda: swarm.stats().devices_with_install >= target, 300)
    got = swarm.stats().devices_with_install
    elapsed = time.perf_counter() - t
    say(f"install command at {got:,} of {target:,} connections {elapsed:.1f} s after create")
    return got, elapsed, cpu_s(fleet_pid) - cpu0


def probe_one_broker(n: int, args: argparse.Namespace) -> tuple[int, list[str]]:
    """Connections one Mosquitto accepts (no fleet): where it stops."""
    fresh_database()
    creds, _ = seed_devices(n)
    root = Path(tempfile.mkdtemp(prefix="fedfleet-probe-"))
    os.chmod(root, 0o755)
    env = {**os.environ, "FEDFLEET_FLEET_DATABASE_URL": PG_URL}
    subprocess.run(
        [*fedfleet(), "fleet", "broker-config", "--out", str(root / "b")],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    os.chmod(root / "b", 0o755)
    brokers = start_brokers(root / "b", 0, acl_pattern=args.acl == "pattern")
    swarm = Swarm(
        creds,
        ports=brokers.device_ports,
        processes=max(2, -(-n // 15_000)),
        source_ips=2,
        heartbeat_s=600,
    ).start()
    try:
        with contextlib.suppress(AssertionError):
            swarm.wait(lambda s: s.connected + s.refused + s.failed >= n, timeout_s=120, what="")
        time.sleep(3)
        stats = swarm.stats()
        return stats.connected, stats.errors
    finally:
        swarm.stop()
        brokers.close()
        shutil.rmtree(root, ignore_errors=True)


def print_connections(results: list[StepResult]) -> None:
    print("\n## Device connections (bench/mqtt_swarm.py, MQTT on loopback, PostgreSQL)\n")
    print(
        "| connections | brokers | connected | connect s | heartbeats stored | install at "
        "| install s | broker RSS MB (KB/conn) | broker CPU s | fleet mqtt RSS MB "
        "| fleet CPU ms/device (rollout) | swarm RSS MB |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        per = 1024 * (r.broker_rss_mb - r.broker_rss_idle_mb) / max(1, r.connected)
        print(
            f"| {r.n:,} | {r.layout} | {r.connected:,} | {r.connect_s:.1f} | {r.seen:,} "
            f"| {r.installs:,} | {r.install_s:.1f} | {r.broker_rss_mb:.0f} ({per:.1f}) "
            f"| {r.broker_cpu_s:.1f} | {r.fleet_rss_mb:.0f} "
            f"| {1000 * r.fleet_cpu_rollout_s / max(1, r.installs):.3f} | {r.swarm_rss_mb:.0f} |"
        )
    for r in results:
        if r.errors:
            print(f"first errors at {r.n:,}: {r.errors[:3]}")
    best = max(results, key=lambda r: r.n)
    met = (
        best.n >= GOAL_CONNECTIONS
        and best.connected >= best.n
        and best.seen >= best.n
        and best.installs >= best.n
    )
    print(
        f"\ngoal: {GOAL_CONNECTIONS:,} connections held, heartbeats ingested, the install at "
        f"every one: {'met' if met else 'not met'} (largest step {best.n:,}: "
        f"{best.connected:,} up, {best.seen:,} stored, {best.installs:,} installs)"
    )


# --- the other parts: the existing benches, run as children ---------------------------


def run_child(cmd: list[str], timeout_s: float) -> str:
    say("$ " + " ".join(cmd))
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return f"(timed out after {timeout_s:.0f} s)"
    return done.stdout + (done.stderr[-2000:] if done.returncode else "")


def part_api(args: argparse.Namespace) -> None:
    print(
        f"\n## API (bench/fleet_api.py, 1 and {args.api_workers} workers; load {load()})\n",
        flush=True,
    )
    out = run_child(
        [
            sys.executable,
            str(HERE / "fleet_api.py"),
            "--devices",
            str(args.api_devices),
            "--seconds",
            str(args.api_seconds),
            "--workers",
            str(args.api_workers),
        ],
        900,
    )
    print(out, flush=True)


def part_ota(args: argparse.Namespace) -> None:
    print(f"\n## Rollout CPU and telemetry into PostgreSQL (bench/ota.py; load {load()})\n")
    out_json = Path(tempfile.mkdtemp()) / "ota.json"
    out = run_child(
        [
            sys.executable,
            str(HERE / "ota.py"),
            "--devices",
            str(args.ota_devices),
            "--telemetry",
            str(args.ota_telemetry),
            "--database",
            "postgresql://postgres@127.0.0.1:5432/test",
            "--json",
            str(out_json),
        ],
        900,
    )
    print(out[-4000:], flush=True)
    with contextlib.suppress(OSError, ValueError, KeyError):
        got = json.loads(out_json.read_text())
        cpu, rate = got["fleet_cpu_ms_per_device"], got["telemetry_rate"]
        print(
            f"goal: rollout fleet CPU {cpu:.3f} ms/device <= 0.2: "
            f"{'met' if cpu <= 0.2 else 'not met'}\n"
            f"goal: telemetry {rate:,.0f} msg/s into PostgreSQL >= 20,000, "
            f"{got['lost']} lost: {'met' if rate >= 20_000 and not got['lost'] else 'not met'}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="api,ota,connections")
    parser.add_argument("--connections", type=int, default=20_000)
    parser.add_argument("--steps", default=None, help="comma-separated connection counts")
    parser.add_argument("--heartbeat-s", type=float, default=60.0)
    parser.add_argument("--per-broker", type=int, default=18_000)
    parser.add_argument("--probe", type=int, default=0, help="probe one Mosquitto with N")
    parser.add_argument("--connect-timeout-s", type=float, default=300.0)
    parser.add_argument("--tls", action="store_true", help="devices connect over TLS")
    parser.add_argument(
        "--acl",
        choices=("generated", "pattern"),
        default="pattern",
        help="both: broker-config's ACL as written (one pattern line for the shared "
        "artifact read; it used to be a user section per device)",
    )
    parser.add_argument("--api-devices", type=int, default=10_000)
    parser.add_argument("--api-seconds", type=float, default=4.0)
    parser.add_argument("--api-workers", type=int, default=2, help="fleet serve --workers N")
    parser.add_argument("--ota-devices", type=int, default=500)
    parser.add_argument("--ota-telemetry", type=int, default=20_000)
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    if unknown := parts - {"api", "ota", "connections"}:
        parser.error(f"unknown --parts {sorted(unknown)}; choose from api,ota,connections")
    steps = (
        [int(s) for s in args.steps.split(",")]
        if args.steps
        else sorted({min(10_000, args.connections), args.connections})
    )
    if any(s < 1 for s in steps) or args.heartbeat_s <= 0 or args.per_broker < 1:
        parser.error("--steps/--connections, --heartbeat-s and --per-broker must be positive")
    soft, hard = raise_nofile()
    cpus = os.cpu_count()
    say(f"machine: {cpus} cores, load {load()}, open files {soft}/{hard} (soft/hard)")
    if "connections" in parts and hard < max(steps) + 100:
        say(
            f"the open-file hard limit {hard} is below {max(steps):,}: one process (broker or "
            "swarm worker) cannot hold them all; steps above --per-broker run bridged brokers"
        )
    if "api" in parts:
        part_api(args)
    if "ota" in parts:
        part_ota(args)
    if "connections" in parts:
        if args.probe:
            up, errors = probe_one_broker(args.probe, args)
            say(f"one Mosquitto, {args.probe:,} tried: {up:,} connected; first errors {errors[:2]}")
        results = []
        for n in steps:
            results.append(connection_step(n, args))
            print_connections(results)
    say(f"done; load {load()}")


if __name__ == "__main__":
    main()
