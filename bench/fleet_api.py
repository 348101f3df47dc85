"""Fleet admin API under concurrent load: SQLite against PostgreSQL, side by side.

For each backend: a fresh database with ``--devices`` devices (default 10,000) spread
over ``--groups`` groups, each with one or two tags; a real ``fedfleet fleet serve``
process (uvicorn, one worker) on a loopback port; then ``--concurrency`` concurrent
HTTP clients for ``--seconds`` per scenario:

- ``list``: ``GET /api/v1/devices?group=<random group>&limit=50`` (page of 50; the total
  only with ``--total``);
- ``heartbeat``: ``POST /api/v1/devices/<random device>/heartbeat`` (one UPDATE);
- ``mixed``: both at once, half the clients each.

Reported per scenario and backend: requests/s, p50 and p99 latency (ms), non-2xx count,
and the PostgreSQL/SQLite ratio. The load generator (asyncio + httpx) runs in this
process on the same machine, so numbers include its CPU contention; both backends get
the same treatment. The PostgreSQL side runs in its own schema (dropped at the end) on
127.0.0.1:5432, database ``test``.

    python bench/fleet_api.py [--devices 10000] [--concurrency 32] [--seconds 8]
        [--backends sqlite,postgres] [--total] [--workers N]

``--workers N`` adds the backend ``postgres-wN``: the same PostgreSQL fleet served by
``fleet serve --workers N``, its CPU summed over the supervisor and its workers, and a
line per scenario with its ratios to the one-worker ``postgres`` run of the same report.

The end of the report says, per backend, whether issue 16's goals are met: at most 1.5 ms
of API CPU per list-of-50 request and 0.5 ms per heartbeat, p99 under 50 ms.

Bounded: about (3 scenarios × seconds + ~30 s set-up) per backend.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
from sqlalchemy import insert

from fleet import migrate
from fleet.audit import Actor
from fleet.credentials import mosquitto_hash
from fleet.crud.tokens import create_token
from fleet.db import make_engine, session_scope
from fleet.models.auth import Role
from fleet.models.common import utcnow
from fleet.models.devices import Device, DeviceTagLink, Group, Tag

PG_DSN = "host=127.0.0.1 port=5432 dbname=test user=postgres"
PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
TAGS = ("icu", "er", "floor-1", "floor-2", "floor-3", "spare")


@dataclass(frozen=True)
class Result:
    backend: str
    scenario: str
    kind: str
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float]
    server_cpu_s: float  # CPU of the API process over the whole scenario (all kinds)
    scenario_requests: int  # requests of every kind in the scenario

    @property
    def cpu_ms_per_request(self) -> float:
        """API-process CPU per request (PostgreSQL's own processes not included)."""
        return 1000 * self.server_cpu_s / max(1, self.scenario_requests)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def seed(url: str, schema: str | None, *, devices: int, groups: int) -> tuple[str, list[str]]:
    """Migrate, bulk-insert the fleet, create an operator token. Returns (token, ids).

    Rows are inserted with plain INSERTs (no audit events): this is benchmark set-up,
    not a change made through the API.
    """
    engine = make_engine(url, schema=schema)
    migrate.upgrade(engine)
    now = utcnow()
    shared_hash = mosquitto_hash(secrets.token_urlsafe(24))  # placeholder credentials
    ids = [f"dev-{i:016x}" for i in range(devices)]
    rng = random.Random(7)
    with engine.begin() as connection:
        connection.execute(
            insert(Group),
            [
                {"id": g + 1, "name": f"group-{g:02d}", "description": "", "created_at": now}
                for g in range(groups)
            ],
        )
        connection.execute(insert(Tag), [{"id": t + 1, "name": n} for t, n in enumerate(TAGS)])
        connection.execute(
            insert(Device),
            [
                {
                    "id": device_id,
                    "name": f"device-{i:05d}",
                    "hardware_target": ("rpi5", "rpi4", "jetson-orin", "cpu-x86")[i % 4],
                    "group_id": i % groups + 1,
                    "mqtt_username": device_id,
                    "mqtt_password_hash": shared_hash,
                    "enrolled_at": now,
                    "enrolled_by": "bench",
                    "last_seen_at": now if i % 3 else None,
                }
                for i, device_id in enumerate(ids)
            ],
        )
        links = []
        for device_id in ids:
            for tag in rng.sample(range(len(TAGS)), k=rng.choice((1, 2))):
                links.append({"device_id": device_id, "tag_id": tag + 1})
        connection.execute(insert(DeviceTagLink), links)
    with session_scope(engine, write=True) as session:
        token, _ = create_token(
            session, name="bench", role=Role.operator, actor=Actor("cli:bench", "admin", "cli")
        )
    engine.dispose()
    return token, ids


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by process ``pid`` and its live children
    (``fleet serve --workers N``'s workers; Linux /proc)."""
    import psutil

    total = 0.0
    for pid_ in [pid, *(c.pid for c in psutil.Process(pid).children(recursive=True))]:
        try:
            fields = Path(f"/proc/{pid_}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_server(
    url: str, schema: str | None, data_dir: Path, workers: int = 1
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "fleet.cli",
        "serve",
        "--port",
        str(port),
        "--database-url",
        url,
        "--log-level",
        "warning",
        "--workers",
        str(workers),
    ]
    if schema:
        command += ["--database-schema", schema]
    process = subprocess.Popen(
        command,
        env={**os.environ, "FEDFLEET_FLEET_DATA_DIR": str(data_dir)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {process.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return process, base
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.terminate()
    raise RuntimeError("server not ready within 120 s")


async def load(
    base: str,
    token: str,
    *,
    kinds: list[str],
    concurrency: int,
    seconds: float,
    ids: list[str],
    groups: int,
    with_total: bool = False,
) -> dict[str, tuple[int, int, list[float]]]:
    """Run ``concurrency`` clients (kinds assigned round-robin) for ``seconds``."""
    headers = {"Authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    stats: dict[str, tuple[int, int, list[float]]] = {k: (0, 0, []) for k in kinds}
    rng = random.Random(11)
    async with httpx.AsyncClient(
        base_url=base, headers=headers, limits=limits, timeout=30
    ) as client:
        stop = time.perf_counter() + seconds

        async def worker(kind: str) -> None:
            done, errors, latencies = 0, 0, []
            while time.perf_counter() < stop:
                started = time.perf_counter()
                try:
                    if kind == "list":
                        group = f"group-{rng.randrange(groups):02d}"
                        params: dict[str, str | int] = {"group": group, "limit": 50}
                        if with_total:
                            params["total"] = "true"
                        response = await client.get("/api/v1/devices", params=params)
                    else:
                        response = await client.post(
                            f"/api/v1/devices/{rng.choice(ids)}/heartbeat", json={}
                        )
                    failed = response.status_code >= 300
                except httpx.TransportError:
                    # A keep-alive connection the server had just closed: count, go on.
                    failed = True
                latencies.append((time.perf_counter() - started) * 1000)
                done += 1
                errors += failed
            old = stats[kind]
            stats[kind] = (old[0] + done, old[1] + errors, old[2] + latencies)

        await asyncio.gather(*(worker(kinds[i % len(kinds)]) for i in range(concurrency)))
    return stats


def run_backend(backend: str, args: argparse.Namespace) -> list[Result]:
    workdir = Path(tempfile.mkdtemp(prefix=f"fleet-bench-{backend}-"))
    schema = None
    workers = int(backend.split("-w")[1]) if "-w" in backend else 1
    if backend == "sqlite":
        url = f"sqlite:///{workdir / 'fleet.db'}"
    else:
        schema = f"fleet_bench_{secrets.token_hex(4)}"
        with psycopg.connect(PG_DSN, autocommit=True) as connection:
            connection.execute(f"CREATE SCHEMA {schema}")
        url = PG_URL
    process = None
    try:
        started = time.perf_counter()
        token, ids = seed(url, schema, devices=args.devices, groups=args.groups)
        print(
            f"[{backend}] seeded {args.devices} devices in {time.perf_counter() - started:.1f} s",
            file=sys.stderr,
        )
        process, base = start_server(url, schema, workdir, workers)
        asyncio.run(
            load(
                base,
                token,
                kinds=["list", "heartbeat"],
                concurrency=4,
                seconds=1.0,
                ids=ids,
                groups=args.groups,
            )
        )  # warm-up
        results = []
        for scenario, kinds in (
            ("list", ["list"]),
            ("heartbeat", ["heartbeat"]),
            ("mixed", ["list", "heartbeat"]),
        ):
            t0 = time.perf_counter()
            cpu0 = process_cpu_seconds(process.pid)
            stats = asyncio.run(
                load(
                    base,
                    token,
                    kinds=kinds,
                    concurrency=args.concurrency,
                    seconds=args.seconds,
                    ids=ids,
                    groups=args.groups,
                    with_total=args.total,
                )
            )
            elapsed = time.perf_counter() - t0
            if process.poll() is not None:
                raise RuntimeError(f"[{backend}] the server died during {scenario}")
            cpu = process_cpu_seconds(process.pid) - cpu0
            total = sum(count for count, _, _ in stats.values())
            for kind, (count, errors, latencies) in stats.items():
                results.append(
                    Result(backend, scenario, kind, count, errors, elapsed, latencies, cpu, total)
                )
            print(f"[{backend}] {scenario}: done", file=sys.stderr)
        return results
    finally:
        if process is not None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
        if schema:
            with psycopg.connect(PG_DSN, autocommit=True) as connection:
                connection.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def print_table(results: list[Result]) -> None:
    rows = {(r.scenario, r.kind, r.backend): r for r in results}
    backends = sorted({r.backend for r in results}, key=lambda b: b != "sqlite")
    keys = list(dict.fromkeys((r.scenario, r.kind) for r in results))
    header = f"{'scenario':<10} {'request':<10}"
    for backend in backends:
        header += (
            f" | {backend + ' req/s':>14} {'p50 ms':>7} {'p99 ms':>7} {'err':>4} {'cpu ms':>6}"
        )
    if len(backends) == 2:
        header += f" | {'req/s ratio':>11} {'p99 ratio':>9}"
    print(header)
    print("-" * len(header))
    for scenario, kind in keys:
        line = f"{scenario:<10} {kind:<10}"
        for backend in backends:
            r = rows.get((scenario, kind, backend))
            if r is None:
                line += f" | {'-':>14} {'-':>7} {'-':>7} {'-':>4} {'-':>6}"
                continue
            line += (
                f" | {r.rps:>14.0f} {r.percentile(0.5):>7.1f} {r.percentile(0.99):>7.1f}"
                f" {r.errors:>4} {r.cpu_ms_per_request:>6.2f}"
            )
        if len(backends) == 2:
            a, b = rows.get((scenario, kind, backends[0])), rows.get((scenario, kind, backends[1]))
            if a and b and a.rps:
                line += (
                    f" | {b.rps / a.rps:>10.2f}x {b.percentile(0.99) / a.percentile(0.99):>8.2f}x"
                )
        print(line)
    if len(backends) == 2:
        print(
            f"(ratios: {backends[1]} / {backends[0]}; req/s above 1 and p99 below 1 favour "
            f"{backends[1]})"
        )
    print(
        "cpu ms = API-process CPU per request over the scenario (PostgreSQL's own server "
        "processes not included); unlike req/s it barely depends on how busy the machine is."
    )
    load1, _, _ = os.getloadavg()
    print(f"machine: {os.cpu_count()} CPUs, 1-minute load average at the end {load1:.1f}")
    print_goals(results)


#: Issue 16's goals per request kind: (API CPU ms per request, p99 ms), on a quiet machine
#: at 32 concurrent clients.
GOALS = {"list": (1.5, 50.0), "heartbeat": (0.5, 50.0)}


def print_goals(results: list[Result]) -> None:
    """One line per backend and goal: met or not met (single-kind scenarios only)."""
    load1, _, _ = os.getloadavg()
    print(
        f"goals (issue 16, on a quiet machine; this run ended at load {load1:.1f} on "
        f"{os.cpu_count()} CPUs, the load generator on the same machine):"
    )
    for r in results:
        if r.scenario != r.kind or r.kind not in GOALS:
            continue
        cpu_goal, p99_goal = GOALS[r.kind]
        for what, value, goal in (
            ("API CPU ms", r.cpu_ms_per_request, cpu_goal),
            ("p99 ms", r.percentile(0.99), p99_goal),
        ):
            verdict = "met" if value <= goal else "NOT met"
            print(f"  {r.backend:<8} {r.kind:<9} {what:<10} {value:>8.2f} <= {goal:<5} {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--groups", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument(
        "--total", action="store_true", help="list requests ask for the total (a COUNT)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="also run PostgreSQL with `fleet serve --workers N` (backend postgres-wN)",
    )
    args = parser.parse_args()
    if not 1 <= args.devices <= 200_000:
        parser.error("--devices must be between 1 and 200000")
    if not 1 <= args.groups <= min(args.devices, 99):
        parser.error("--groups must be between 1 and min(devices, 99)")
    if not 1 <= args.concurrency <= 512:
        parser.error("--concurrency must be between 1 and 512")
    if not 0.5 <= args.seconds <= 120:
        parser.error("--seconds must be between 0.5 and 120")
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if not backends or any(b not in ("sqlite", "postgres") for b in backends):
        parser.error("--backends takes sqlite and/or postgres, comma-separated")
    if not 1 <= args.workers <= 16:
        parser.error("--workers must be between 1 and 16")
    if args.workers > 1:
        backends.append(f"postgres-w{args.workers}")
    load_before = os.getloadavg()[0]
    results: list[Result] = []
    for backend in backends:
        results += run_backend(backend, args)
    print()
    print(
        f"fleet API, {args.devices} devices in {args.groups} groups, {args.concurrency} concurrent "
        f"clients, {args.seconds:.0f} s per scenario, one uvicorn worker (postgres-wN: N), "
        "loopback HTTP; "
        f"1-minute load average before the run {load_before:.1f}"
    )
    print_table(results)
    print_workers(results)


def print_workers(results: list[Result]) -> None:
    """N workers against one, both on PostgreSQL, measured in this run."""
    one = {(r.scenario, r.kind): r for r in results if r.backend == "postgres"}
    for r in results:
        base = one.get((r.scenario, r.kind))
        if "-w" in r.backend and base is not None and base.rps:
            print(
                f"{r.backend} / postgres: {r.scenario} {r.kind} req/s {r.rps / base.rps:.2f}x, "
                f"p99 {r.percentile(0.99) / max(base.percentile(0.99), 1e-9):.2f}x, "
                f"cpu ms/request {r.cpu_ms_per_request:.2f} vs {base.cpu_ms_per_request:.2f}"
            )


if __name__ == "__main__":
    main()
