"""A rollout's command path alone: the fleet-side CPU per device, no device processes.

N enrolled devices (``--devices``, repeatable: one run per size, so the fixed and the
per-device cost can be told apart), one wave of 100 %, the real ``RolloutController``
and ``FleetBridge`` on a real Mosquitto: the controller signs, encodes and publishes
every install (no device subscribes: the broker drops them), then every device's install
ack goes through the bridge's ``ingest_batch`` (decode, rows, bulk UPDATEs), then the
controller's verdict closes the wave. CPU of this process (all its threads: the bridge's
network thread publishes) per step, and a line through the sizes: fixed seconds per
rollout + milliseconds per device. ``--profile`` prints a cProfile (cumulative) of the
last size. Chunk serving, statuses and heartbeats are left out (``bench/ota.py``
measures the whole rollout with real agents).

    python bench/ota_command_path.py --devices 1000 --devices 10000
        [--database postgresql://postgres@127.0.0.1:5432/test] [--profile [--sort tottime]]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "e2e"))

from ota_testkit import SIM_ACTOR, OtaFleet, register_demo_bundle
from sqlmodel import Session, select

from edge_client.protocol import mqtt as proto
from fleet.crud.rollouts import create_rollout
from fleet.db import session_scope
from fleet.models.ota import Rollout, RolloutCreate, RolloutDevice, RolloutStatus
from fleet.ota.controller import RolloutController

GOAL_MS = 0.2  # fleet-side CPU per device (issue 16, item 4)


def one_size(n: int, database: str | None, profile: cProfile.Profile | None) -> float:
    """CPU seconds of the command path for ``n`` devices (and prints each step)."""
    root = Path(tempfile.mkdtemp(prefix="fedfleet-bench-command-path-"))
    fleet = OtaFleet(root, devices=n, database=database)
    try:
        fleet.start(agents=False)
        bridge = fleet.bridge
        assert bridge is not None
        model_id, _ = register_demo_bundle(fleet)
        with session_scope(fleet.engine, write=True) as session:
            rollout = create_rollout(
                session,
                RolloutCreate(model_version_id=model_id, group=fleet.group, waves=[100]),
                actor=SIM_ACTOR,
            )
            rollout_id = rollout.id or 0
        controller = RolloutController(engine=fleet.engine, sender=bridge, release_after_s=3600)

        def timed(label: str, step: Callable[[], None]) -> float:
            began = time.process_time()
            if profile is not None:
                profile.enable()
            step()
            if profile is not None:
                profile.disable()
            spent = time.process_time() - began
            print(f"  {label:<28}{spent:8.3f} CPU-s {spent / n * 1e6:8.1f} µs/device")
            return spent

        print(f"N = {n}:")
        sent = timed("send installs", controller.step)
        with Session(fleet.engine) as session:
            rows = session.exec(
                select(RolloutDevice.device_id, RolloutDevice.command_id).where(
                    RolloutDevice.rollout_id == rollout_id
                )
            ).all()
        assert len(rows) == n and all(command for _, command in rows), "installs not sent"
        frames = [
            (
                "msg",
                proto.topic(device_id, "ack"),
                proto.encode(
                    proto.Ack(
                        command_id=command or "",
                        ok=True,
                        action="install",
                        rollout_id=rollout_id,
                        model_version_id=model_id,
                    )
                ),
            )
            for device_id, command in rows
        ]

        def acks() -> None:
            for first in range(0, n, 1000):
                bridge.ingest_batch(frames[first : first + 1000])

        acked = timed("acks (ingest_batch)", acks)
        verdict = timed("verdict", controller.step)
        with Session(fleet.engine) as session:
            status = session.get(Rollout, rollout_id).status  # type: ignore[union-attr]
        assert status is RolloutStatus.succeeded, status
        return sent + acked + verdict
    finally:
        fleet.close()
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, action="append", default=None)
    parser.add_argument("--database", default=None, help="postgresql://... (default SQLite)")
    parser.add_argument("--profile", action="store_true", help="cProfile of the last size")
    parser.add_argument(
        "--sort", default="cumulative", help="the profile's order (cumulative, tottime, ...)"
    )
    args = parser.parse_args()
    sizes = args.devices or [1000]
    if min(sizes) < 1:
        parser.error("--devices must be at least 1")
    totals = []
    for k, n in enumerate(sizes):
        profile = (
            cProfile.Profile(time.process_time) if args.profile and k == len(sizes) - 1 else None
        )
        totals.append(one_size(n, args.database, profile))
        print(f"  total {totals[-1]:.3f} CPU-s = {totals[-1] / n * 1e3:.3f} ms/device")
        if profile is not None:
            pstats.Stats(profile).sort_stats(args.sort).print_stats(30)
    if len(sizes) > 1 and sizes[0] != sizes[-1]:
        per = (totals[-1] - totals[0]) / (sizes[-1] - sizes[0])
        fixed = totals[0] - per * sizes[0]
        met = "met" if per * 1e3 <= GOAL_MS else "NOT met"
        print(
            f"fixed {fixed:.3f} CPU-s per rollout + {per * 1e3:.3f} ms per device "
            f"(goal {GOAL_MS} ms per device: {met})"
        )
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
