"""The closed loop running by itself (issue 20), on real processes only: a TLS SuperLink
with two sites (`coordinator up`, `site join`), `fleet serve` (its promotion controller
builds and signs bundles with the key in its signing-key folder), `fleet mqtt` (bridge,
rollout controller, drift checks), `fedfleet run autopilot`, a real Mosquitto and four
simulated devices running the bundles with onnxruntime.

After setup (keys, policy applied, a first model registered) nobody types anything:

1. the first model passes the gates, is built, signed, canaried and promoted;
2. three devices see shifted inputs → an agreed drift event → the fleet creates a
   retraining run → the autopilot executes it warm on the SuperLink with the sites →
   the result is registered → gates → bundle → canary waves → promoted everywhere;
3. a model that passes the gates but is 5 points less accurate on the devices
   (:mod:`simulation.device_quality`) is halted in its first wave (2 of 4 devices),
   those devices roll back, and the timeline (GET /api/v1/timeline) says why.

The timeline is printed with its timestamps (``pytest -s``) and written to
``closed-loop-timeline.txt`` in the test's folder.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from sqlmodel import Session, col, select

sys.path.insert(0, str(Path(__file__).parent))

from fleet_server import create_token, fleet_fixtures
from ota_testkit import SIM_ACTOR, OtaFleet
from silo_testkit import FEDFLEET, TASK, SiloFederation, kill_group, wait_for

from coordinator.cli import run_app
from coordinator.run_state import RunState
from fleet.crud.registry import add_artifact, register_model
from fleet.crud.runs import create_run
from fleet.db import session_scope
from fleet.models.devices import Device
from fleet.models.ota import DriftEvent
from fleet.models.policies import Promotion, PromotionState
from fleet.models.registry import Artifact, ArtifactFormat, ModelVersion, ModelVersionCreate
from fleet.models.runs import Run, RunCreate
from simulation.device_quality import TrafficModel, VersionQuality

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DEVICES = 4
FIRST_WAVE = 2  # waves [50, 100] of 4 devices
BASE = VersionQuality(accuracy=0.95, latency_ms=2.0, classes=2)
RUN = {
    "task": TASK,
    "sites": 2,
    "min-sites": 2,
    "num-server-rounds": 1,
    "learning-rate": 0.05,
    "batch-size": 16,
    "seed": 7,
}
RUN_TOML = "[run]\n" + "".join(  # the autopilot's: --retrain sets the task
    f"{k} = {v!r}\n" for k, v in RUN.items() if k != "task"
)


def _policy(key: Path) -> str:
    return (
        f'group = "wards"\ntask = "{TASK}"\ntargets = ["cpu-x86"]\n'
        "[gates]\nmin_accuracy = 0.8\nmax_bundle_accuracy_drop_points = 5.0\n"
        "[canary]\nwaves = [50, 100]\nsoak_s = 3.0\nmax_install_failure_rate = 0.0\n"
        "max_accuracy_drop_points = 2.0\nmin_quality_devices = 2\nmin_quality_samples = 500\n"
        f'[signing]\nkey = "{key}"\n'
        "[retrain]\nenabled = true\ncooldown_s = 3600\nmax_runs_per_day = 2\n"
    )


def _start(
    command: list[str], *, log: Path, cwd: Path, env: dict[str, str]
) -> subprocess.Popen[bytes]:
    """A child in its own session (stopped by its PID with :func:`kill_group`)."""
    with log.open("ab") as fh:
        return subprocess.Popen(
            command,
            cwd=cwd,
            env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "PYTHONUNBUFFERED": "1", **env},
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


class Loop:
    """Every process of the loop, started in :meth:`start`, stopped by PID in :meth:`close`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "fleet"
        self.data.mkdir()
        self.traffic = TrafficModel(
            by_version={}, default=BASE, samples=2000, labelled=2000, window_s=1.0
        )
        self.ota = OtaFleet(self.data, devices=DEVICES, group="wards")
        self.keys = root / "signing-keys"
        self.keys.mkdir(mode=0o700)
        self.key = self.keys / "wards.key"
        self.key.write_bytes(
            self.ota.key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        self.key.chmod(0o600)
        self.fed = SiloFederation(root / "silo")
        self.processes: list[subprocess.Popen[bytes]] = []
        self._server_cm: Any = None
        self.server: Any = None

    def start(self) -> Loop:
        # The federation's start-up (certificates, registrations) overlaps the fleet's.
        (self.root / "silo").mkdir()
        failed: list[BaseException] = []

        def start_federation() -> None:
            try:
                self.fed.start(num_sites=2)
            except BaseException as err:  # shown by the assertion below
                failed.append(err)

        federation = threading.Thread(target=start_federation)
        federation.start()
        self._server_cm = fleet_fixtures().running_server(
            self.data,
            env={
                "FEDFLEET_FLEET_SIGNING_KEY_DIR": str(self.keys),
                "FEDFLEET_FLEET_PROMOTION_INTERVAL_S": "0.5",
            },
        )
        self.server = self._server_cm.__enter__()
        self.ota.start(fleet_service=False, traffic=self.traffic, heartbeat_s=2.0, telemetry_s=2.0)
        self.processes.append(
            _start(
                [
                    *(FEDFLEET, "fleet", "mqtt", "--broker-port", str(self.ota.broker.port)),
                    *("--password-file", str(self.data / "broker" / "fleet.pass")),
                    *("--command-key", str(self.key), "--drift-every-s", "1"),
                ],
                log=self.root / "fleet-mqtt.log",
                cwd=self.root,
                env={"FEDFLEET_FLEET_DATA_DIR": str(self.data)},
            )
        )
        federation.join(timeout=300)
        assert not failed and len(self.fed.sites) == 2, f"the federation did not start: {failed}"
        self.admin = create_token(self.server, "admin", cwd=self.root)
        self.operator = create_token(self.server, "operator", cwd=self.root)
        return self

    def fedfleet(self, *args: str, token: str) -> str:
        done = subprocess.run(
            [FEDFLEET, *args],
            cwd=self.root,
            env={**os.environ, "FEDFLEET_URL": self.server.base_url, "FEDFLEET_TOKEN": token},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def start_autopilot(self) -> None:
        run_toml = self.root / "run.toml"
        run_toml.write_text(RUN_TOML)
        self.processes.append(
            _start(
                [
                    *(FEDFLEET, "run", "autopilot", "--config", str(run_toml)),
                    *("--coordinator", str(self.fed.coordinator_toml), "--interval", "1"),
                    *("--timeout", "240"),
                ],
                log=self.root / "autopilot.log",
                cwd=self.fed.root,
                env={"FEDFLEET_URL": self.server.base_url, "FEDFLEET_TOKEN": self.operator},
            )
        )

    def close(self) -> None:
        for process in self.processes:
            kill_group(process)
        self.fed.stop()
        if self._server_cm is not None:
            self._server_cm.__exit__(None, None, None)
        self.ota.close()


@pytest.fixture
def loop(tmp_path: Path) -> Iterator[Loop]:
    started = Loop(tmp_path)
    try:
        yield started.start()
    finally:
        started.close()


def _register(loop: Loop, checkpoint: bytes, accuracy: float, *, parent: int | None) -> int:
    """What ``run submit --register`` leaves in the fleet: a run, its version, model.pt."""
    ota = loop.ota
    stored = ota.store.save(io.BytesIO(checkpoint), max_bytes=len(checkpoint) + 1)
    with session_scope(ota.engine, write=True) as session:
        run = create_run(session, RunCreate(task=TASK, config={"seed": 7}), actor=SIM_ACTOR)
        model = register_model(
            session,
            ModelVersionCreate(
                task=TASK,
                source_run_id=run.id,
                parent_id=parent,
                metrics={"final_accuracy": accuracy},
            ),
            actor=SIM_ACTOR,
        )
        add_artifact(
            session,
            model,
            format=ArtifactFormat.torch,
            target="any",
            filename="model.pt",
            size_bytes=stored.size_bytes,
            sha256=stored.sha256,
            signature=None,
            actor=SIM_ACTOR,
        )
        return model.id or 0


def _promotion(loop: Loop, model_id: int) -> Promotion | None:
    with Session(loop.ota.engine) as session:
        return session.exec(
            select(Promotion).where(col(Promotion.model_version_id) == model_id)
        ).first()


def _ended(loop: Loop, model_id: int) -> Promotion | None:
    found = _promotion(loop, model_id)
    finished = (
        PromotionState.promoted,
        PromotionState.rolled_back,
        PromotionState.failed,
        PromotionState.rejected,
    )
    return found if found is not None and found.state in finished else None


def _devices_on(loop: Loop, model_id: int) -> int:
    with Session(loop.ota.engine) as session:
        return len(
            session.exec(select(Device.id).where(col(Device.model_version_id) == model_id)).all()
        )


def _drift_events(loop: Loop) -> list[DriftEvent]:
    with Session(loop.ota.engine) as session:
        return list(session.exec(select(DriftEvent)).all())


def _retrained(loop: Loop, parent: int) -> ModelVersion | None:
    with Session(loop.ota.engine) as session:
        return session.exec(
            select(ModelVersion).where(col(ModelVersion.parent_id) == parent)
        ).first()


def _logs(loop: Loop) -> str:
    parts = []
    for name in ("autopilot.log", "fleet-mqtt.log"):
        path = loop.root / name
        if path.exists():
            parts.append(f"--- {name}\n{path.read_text()[-3000:]}")
    return "\n".join(parts)


def test_drift_retrains_canaries_and_promotes_by_itself_and_a_worse_model_is_rolled_back(
    loop: Loop, tmp_path: Path
) -> None:
    began = time.monotonic()
    # Prepare (the operator's commands, once): the policy and the autopilot.
    policy = tmp_path / "wards.toml"
    policy.write_text(_policy(loop.key))
    loop.fedfleet("policy", "apply", str(policy), token=loop.admin)
    loop.start_autopilot()
    fed = loop.fed
    env = {"FEDFLEET_URL": loop.server.base_url, "FEDFLEET_TOKEN": loop.operator}
    run_toml, coordinator = loop.root / "run.toml", str(fed.coordinator_toml)
    # A missing token is refused before anything is submitted.
    runs_before = len(list(fed.settings.state_dir.glob("runs/*")))
    refused = fed.runner.invoke(
        run_app,
        ["submit", "--config", str(run_toml), "--register", "-c", coordinator],
        env={**env, "FEDFLEET_TOKEN": ""},
    )
    assert refused.exit_code != 0 and "FEDFLEET_TOKEN" in refused.output
    assert len(list(fed.settings.state_dir.glob("runs/*"))) == runs_before

    # 1. A first federated run registers its model (`run submit --register`); it goes
    #    through the gates, its bundle, both waves.
    state = fed.submit(RUN, "--register", env=env)
    first = int(fed.last_stdout.strip().splitlines()[-1])
    checkpoint = (state.run_dir / "model.pt").read_bytes()
    with Session(loop.ota.engine) as session:
        model = session.get(ModelVersion, first)
        assert model is not None and model.task == TASK and model.source_round == 1
        accuracy = model.metrics["final_accuracy"]
        assert accuracy == pytest.approx(state.rounds()[-1]["accuracy"])
        source = session.get(Run, model.source_run_id)
        assert source is not None and source.status == "completed"
        assert source.final_model_version_id == first
        (torch_pt,) = [
            a
            for a in session.exec(select(Artifact).where(col(Artifact.model_version_id) == first))
            if a.format is ArtifactFormat.torch
        ]
        assert torch_pt.sha256 == hashlib.sha256(checkpoint).hexdigest()
    promoted = wait_for(lambda: _ended(loop, first), timeout=90, what="the first promotion")
    assert promoted.state is PromotionState.promoted, promoted.reason
    wait_for(lambda: _devices_on(loop, first) == DEVICES, timeout=20, what="all on v1")
    first_done = time.monotonic()

    # 2. Drift: three of four devices see inputs far from the training data.
    assert loop.ota.sim is not None
    shifted = np.random.default_rng(0).normal(loc=6.0, size=(200, 30)).astype(np.float32)

    def drifted() -> bool:
        for agent in loop.ota.sim.agents[:3]:  # type: ignore[union-attr]
            agent.predict(shifted)
        return bool(_drift_events(loop))

    wait_for(drifted, timeout=30, what="an agreed drift event", poll=0.5)
    retrained = wait_for(
        lambda: _retrained(loop, first), timeout=240, what=f"the retrained model\n{_logs(loop)}"
    )
    second = retrained.id or 0
    # A real federated run on the SuperLink with both sites, executed into the fleet run
    # the drift event started.
    # (drifted windows still arriving make more events on v1: held by the cooldown)
    (event,) = [e for e in _drift_events(loop) if e.run_id is not None]
    assert event.run_id == retrained.source_run_id
    with Session(loop.ota.engine) as session:
        fleet_run = session.get(Run, event.run_id)
        assert fleet_run is not None
        assert fleet_run.config.get("reason") == "drift" and fleet_run.status == "completed"
    assert "final_accuracy" in retrained.metrics
    # ... warm: it started from exactly the deployed model's weights ...
    (executed,) = [
        RunState.load(fed.settings.state_dir, p.name)
        for p in fed.settings.state_dir.glob("runs/*")
        if "initial-model" in RunState.load(fed.settings.state_dir, p.name).run_config
    ]
    initial = Path(executed.run_config["initial-model"])
    assert hashlib.sha256(initial.read_bytes()).hexdigest() == torch_pt.sha256
    # ... and once: a retraining run is not executed again.
    again = fed.runner.invoke(
        run_app,
        ["submit", "--config", str(run_toml), "--retrain", str(event.run_id), "-c", coordinator],
        env=env,
    )
    assert again.exit_code != 0 and "not 'created'" in again.output
    promoted = wait_for(lambda: _ended(loop, second), timeout=90, what="the retrained promotion")
    assert promoted.state is PromotionState.promoted, promoted.reason
    wait_for(lambda: _devices_on(loop, second) == DEVICES, timeout=20, what="all on v2")
    second_done = time.monotonic()

    # 3. A worse model: passes the gates, 5 points less accurate on the devices (3 points
    #    over the policy's limit of 2: a clear verdict from the first windows).
    bad = _register(loop, checkpoint, accuracy, parent=second)
    loop.traffic.by_version = {bad: BASE.worse(5.0)}  # type: ignore[misc]
    halted = wait_for(lambda: _ended(loop, bad), timeout=90, what="the worse model's promotion")
    bad_done = time.monotonic()
    assert halted.state is PromotionState.rolled_back, halted.reason
    wait_for(lambda: _devices_on(loop, second) == DEVICES, timeout=20, what="all back on v2")
    exposed = {
        agent.config.device_id
        for agent in loop.ota.sim.agents
        if any(a.action == "install" and a.ok and a.model_version_id == bad for a in agent.acks)
    }

    # Assert: exposure within the first wave; the reason on the timeline.
    assert 0 < len(exposed) <= FIRST_WAVE, exposed
    with httpx.Client(
        base_url=f"{loop.server.base_url}/api/v1",
        headers={"Authorization": f"Bearer {loop.admin}"},
        timeout=30,
    ) as api:
        items = api.get("/timeline", params={"group": "wards"}).json()
    lines = [
        f"{i['at']}  {i['actor']:20}  {i['summary']}"
        + (f" -- {i['reason']}" if i.get("reason") else "")
        for i in items
    ]
    text = "\n".join(lines)
    actions = [i["action"] for i in items]
    for step in ("promotion.retrain", "promotion.bundle_built", "promotion.promote"):
        assert step in actions, text
    (rolled_back,) = [i for i in items if i["action"] == "promotion.roll_back"]
    assert "wave 1" in rolled_back["reason"] and "accuracy" in rolled_back["reason"], text
    assert rolled_back["actor"] == "system:promotions"
    figures = (
        f"first model promoted after {first_done - began:.1f} s; drift to retrained model "
        f"promoted {second_done - first_done:.1f} s; worse model halted "
        f"{bad_done - second_done:.1f} s after registration; devices that ever ran it: "
        f"{len(exposed)} of {DEVICES} (first wave {FIRST_WAVE}); load {os.getloadavg()}"
    )
    (tmp_path / "closed-loop-timeline.txt").write_text(text + "\n\n" + figures + "\n")
    print("\n" + text + "\n" + figures)
