"""Model-aware canaries at fleet scale: how much of the group a worse model reaches.

``--devices`` simulated devices (default 1,000; real :class:`DeviceAgent`s on a private
loopback Mosquitto, in ``--processes`` worker processes) run model v1 and publish, every
``--window-s`` seconds, synthetic quality signals for the version each runs
(:mod:`simulation.device_quality`: ``--samples`` inferences and as many labelled
outcomes per window). Then, through the real bridge and rollout controller, each
scenario rolls a new model out in waves ``--waves`` (default 1,10,100: a first wave of
1 %) with the [canary] defaults of docs/policies.md (accuracy drop 2 points, latency
ratio 1.5, error rate 0.01, prediction shift 0.25) and ``--soak-s``:

- ``3 points worse``: accuracy 0.95 -> 0.92;
- ``2x slower``: the same accuracy, twice the latency;
- ``good``: the same quality as v1 (it must reach 100 % with no command).

Reported per scenario: the outcome, the **exposure** (devices that ran the new model at
any time, as a percent of the group) and the **time to decision** (rollout created ->
aborted, or -> succeeded). The peer, measured side by side in the same run on the same
devices: the same worse model rolled out with install-failure checks only — what AWS IoT
Jobs, hawkBit and balena abort on — whose exposure is the whole group. Goal (issue 20):
a model 3 points worse, or 2x slower, halted in the first wave with <= 1 % of the group
exposed and rolled back; a good model at 100 % untouched.

    python bench/canary.py [--devices 1000] [--processes 2] [--waves 1,10,100]
                           [--soak-s 20] [--window-s 2] [--samples 200]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "e2e"))

from ota_testkit import SIM_ACTOR, TARGET, OtaFleet, register_bundle, wait_for
from sqlmodel import Session, select

from firmware_images.demo import build_demo_bundle
from fleet.crud.rollouts import create_rollout
from fleet.db import session_scope
from fleet.models.ota import Rollout, RolloutCreate, RolloutDevice, RolloutStatus
from fleet.ota.guard import DEFAULT_RATES, Limits
from fleet.policy import Canary
from simulation.device_quality import TrafficModel, VersionQuality

BASE = VersionQuality(accuracy=0.95, latency_ms=2.0)


def _rollout(
    fleet: OtaFleet, model_id: int, waves: list[int], *, gated: bool, soak_s: float
) -> int:
    canary = Canary(waves=tuple(waves), soak_s=soak_s)
    fields = canary.rollout_fields()
    if not gated:  # the peer: install failures only
        fields = {"waves": waves, "max_failure_rate": canary.max_install_failure_rate}
    with session_scope(fleet.engine, write=True) as session:
        rollout = create_rollout(
            session,
            RolloutCreate(
                model_version_id=model_id, group=fleet.group, ack_timeout_s=120, **fields
            ),
            actor=SIM_ACTOR,
        )
        return rollout.id or 0


def _run(
    fleet: OtaFleet,
    model_id: int,
    waves: list[int],
    *,
    gated: bool,
    soak_s: float,
    timeout_s: float,
) -> dict[str, object]:
    began = time.monotonic()
    rollout_id = _rollout(fleet, model_id, waves, gated=gated, soak_s=soak_s)

    def done() -> bool:
        with Session(fleet.engine) as session:
            r = session.get(Rollout, rollout_id)
            return r is not None and r.status in (RolloutStatus.succeeded, RolloutStatus.aborted)

    wait_for(done, timeout_s=timeout_s, what=f"rollout {rollout_id} to decide")
    elapsed = time.monotonic() - began
    with Session(fleet.engine) as session:
        rollout = session.get(Rollout, rollout_id)
        assert rollout is not None
        rows = session.exec(
            select(RolloutDevice).where(RolloutDevice.rollout_id == rollout_id)
        ).all()
    # Ran the new model at any time: installed it, or installed it and was rolled back.
    exposed = sum(r.state.value in ("installed", "rolled_back") for r in rows)
    return {
        "status": rollout.status.value,
        "wave": rollout.current_wave + 1,
        "exposed": exposed,
        "group": len(rows),
        "seconds": elapsed,
        "reason": rollout.reason,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--waves", default="1,10,100")
    parser.add_argument("--soak-s", type=float, default=20.0)
    parser.add_argument("--window-s", type=float, default=2.0)
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()
    if args.devices < 2 or args.processes < 1 or args.window_s <= 0 or args.samples < 1:
        parser.error("--devices >= 2, --processes >= 1, --window-s > 0, --samples >= 1")
    waves = [int(w) for w in args.waves.split(",")]
    t0 = time.perf_counter()

    def say(text: str) -> None:
        print(f"[{time.perf_counter() - t0:7.1f} s] {text}", flush=True)

    root = Path(tempfile.mkdtemp(prefix="bench-canary-"))
    say(f"enrolling {args.devices} devices ...")
    fleet = OtaFleet(root, devices=args.devices, limits=Limits(rates=dict(DEFAULT_RATES)))
    key = fleet.key
    models = {}
    for name, seed in (("v1", 1), ("worse", 2), ("slower", 3), ("good", 4), ("peer", 5)):
        bundle = build_demo_bundle(private_key=key, version=name, seed=seed)
        models[name] = register_bundle(
            fleet.engine, fleet.store, bundle=bundle.data, task="t", target=TARGET
        )
    traffic = TrafficModel(
        by_version={
            models["v1"]: BASE,
            models["worse"]: BASE.worse(3.0),
            models["slower"]: BASE.slower(2.0),
            models["good"]: BASE,
            models["peer"]: BASE.worse(3.0),
        },
        default=BASE,
        samples=args.samples,
        labelled=args.samples,
        window_s=args.window_s,
    )
    results: dict[str, dict[str, object]] = {}
    try:
        fleet.start(
            heartbeat_s=30.0,
            telemetry_s=3600.0,
            chunk_timeout_s=10.0,
            processes=args.processes,
            device_root=Path("/dev/shm") if Path("/dev/shm").is_dir() else None,
            traffic=traffic,
        )
        wait_for(
            lambda: all(r.connected for r in fleet.reports()), timeout_s=300, what="connections"
        )
        say("every device installs v1 (one wave, no gates) ...")
        setup = _run(fleet, models["v1"], [100], gated=False, soak_s=0.0, timeout_s=600)
        say(f"v1: {setup['status']} on {setup['exposed']} devices in {setup['seconds']:.1f} s")
        time.sleep(3 * args.window_s)  # a few windows of baseline signals
        for name in ("worse", "slower", "good"):
            say(f"scenario {name} ...")
            results[name] = _run(
                fleet, models[name], waves, gated=True, soak_s=args.soak_s, timeout_s=900
            )
            say(f"{name}: {results[name]['status']} ({str(results[name]['reason'])[:160]})")
            if name != "good":
                wait_for(lambda: _all_back(fleet, models["v1"]), timeout_s=120, what="the rollback")
        say("peer: the worse model with install-failure checks only ...")
        results["peer"] = _run(fleet, models["peer"], waves, gated=False, soak_s=0.0, timeout_s=900)
    finally:
        fleet.close()
    _report(results, args, waves)


def _all_back(fleet: OtaFleet, v1: int) -> bool:
    from fleet.models.devices import Device

    with Session(fleet.engine) as session:
        return set(session.exec(select(Device.model_version_id)).all()) == {v1}


def _report(
    results: dict[str, dict[str, object]], args: argparse.Namespace, waves: list[int]
) -> None:
    print()
    print(
        f"{args.devices} devices, waves {waves} %, soak {args.soak_s:g} s, "
        f"{args.samples} labelled samples per device per {args.window_s:g} s window"
    )
    print(f"{'scenario':<34} {'outcome':<10} {'wave':>4} {'exposed':>12} {'decision s':>10}  goal")
    goals = {
        "worse": "halted in wave 1, <= 1 %",
        "slower": "halted in wave 1, <= 1 %",
        "good": "100 %, no command",
        "peer": "(peer: install failures only)",
    }
    labels = {
        "worse": "3 points worse (quality gates)",
        "slower": "2x slower (quality gates)",
        "good": "as good (quality gates)",
        "peer": "3 points worse (install-only peer)",
    }
    for name in ("worse", "slower", "good", "peer"):
        r = results.get(name)
        if r is None:
            print(f"{labels[name]:<34} not run")
            continue
        share = 100.0 * int(r["exposed"]) / int(r["group"])  # type: ignore[call-overload]
        if name in ("worse", "slower"):
            met = r["status"] == "aborted" and r["wave"] == 1 and share <= 1.0
        elif name == "good":
            met = r["status"] == "succeeded" and share == 100.0
        else:
            met = None
        verdict = "" if met is None else ("met" if met else "NOT met")
        print(
            f"{labels[name]:<34} {r['status']:<10} {r['wave']:>4} "
            f"{r['exposed']:>5} ({share:4.1f} %) {float(r['seconds']):>10.1f}  "  # type: ignore[arg-type]
            f"{goals[name]}: {verdict}"
        )
    worse, peer = results.get("worse"), results.get("peer")
    if worse and peer and int(worse["exposed"]):  # type: ignore[call-overload]
        ratio = int(peer["exposed"]) / int(worse["exposed"])  # type: ignore[call-overload]
        print(f"exposure to the worse model: install-only peer / quality gates = {ratio:.0f}x")


if __name__ == "__main__":
    main()
