"""Simulated devices split over worker processes (``--processes K``): a real rollout
over Mosquitto reaches every device in every worker, and results come back from them."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import Session
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))

from ota_testkit import SIM_ACTOR, TARGET, OtaFleet, register_bundle, wait_for

from firmware_images.demo import build_demo_bundle
from fleet.crud.rollouts import create_rollout
from fleet.db import session_scope
from fleet.models.ota import Rollout, RolloutCreate, RolloutStatus
from simulation.fleet_devices import ProcessFleet

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(params=["mosquitto", "nats"])
def fleet(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[OtaFleet]:
    ota = OtaFleet(tmp_path, devices=6, broker=request.param)
    try:
        yield ota.start(processes=2, durable=True)
    finally:
        ota.close()


def test_six_devices_in_two_processes_all_install_the_signed_bundle(fleet: OtaFleet) -> None:
    # Prepare: the agents run in two worker processes, none in this one.
    assert fleet.procs is not None and fleet.sim is None
    pids = fleet.procs.pids
    assert len(set(pids)) == 2 and os.getpid() not in pids
    bundle = build_demo_bundle(private_key=fleet.key, version="v-proc", seed=5, pad_to=60_000)
    model_id = register_bundle(
        fleet.engine, fleet.store, bundle=bundle.data, task="t", target=TARGET
    )

    # Execute: one wave to the whole group.
    with session_scope(fleet.engine, write=True) as session:
        rollout_id = create_rollout(
            session,
            RolloutCreate(model_version_id=model_id, group=fleet.group, waves=[100]),
            actor=SIM_ACTOR,
        ).id

    def finished() -> bool:
        with Session(fleet.engine) as session:
            row = session.get(Rollout, rollout_id)
            return row is not None and row.status is not RolloutStatus.running

    wait_for(finished, timeout_s=60, what="the rollout")

    # Assert: the rollout succeeded and every device, from both workers, runs the bundle.
    with Session(fleet.engine) as session:
        row = session.get(Rollout, rollout_id)
        assert row is not None and row.status is RolloutStatus.succeeded
    reports = fleet.reports()
    assert sorted(r.device_id for r in reports) == sorted(d.device_id for d in fleet.devices)
    assert all(r.sha256 == bundle.sha256 and r.version == "v-proc" for r in reports)
    assert all(r.last_ack_ok and r.last_ack_stage == "installed" for r in reports)
    assert all(r.timings["installed"] >= r.timings["downloaded"] for r in reports)
    # Each device's slot holds the verified bytes, moved there from its download.
    slots = list((fleet.root / "devices").glob("*/slot-*/bundle.ffb"))
    assert len(slots) == 6 and all(p.read_bytes() == bundle.data for p in slots)
    assert not list((fleet.root / "devices").glob("*/downloads/*.part"))


def test_a_worker_that_died_is_named_and_the_others_are_stopped(fleet: OtaFleet) -> None:
    procs = fleet.procs
    assert procs is not None
    dead = procs.pids[0]
    os.kill(dead, signal.SIGKILL)  # the worker's own PID, which this test started
    with pytest.raises(RuntimeError, match=f"pid {dead}"):
        procs.reports()
    procs.stop()
    assert all(not p.is_alive() for p in procs._procs)


def test_process_fleet_and_cli_refuse_bad_process_counts(tmp_path: Path) -> None:
    from fedfleet.cli import build_app

    app = build_app()  # `fedfleet fleet simulate-devices` is mounted by the root

    with pytest.raises(ValueError, match="at least 1"):
        ProcessFleet([], processes=0)
    pub = tmp_path / "fleet.pub"
    pub.write_text("not used: refused before")
    for bad in ("0", "3"):
        result = CliRunner().invoke(
            app,
            [
                *("fleet", "simulate-devices", "--count", "2", "--processes", bad),
                *("--public-key", str(pub)),
            ],
        )
        assert result.exit_code == 2 and "--processes must be 1..--count (2)" in result.output
