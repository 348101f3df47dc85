"""``--app`` with ``--devices``: the simulated fleet meets a Flower app as a SuperLink
would: offline devices are not connected (never sampled), a server waiting for nodes
waits in simulated time, and a SecAgg+ round loses devices only where Flower's
``SecAggPlusWorkflow`` handles it (fl-dp-sa's pattern, written here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.supercore.task_identity import TaskIdentity

import simulation.inprocess as inprocess
from simulation.devices import DeviceProfile, register_profile
from simulation.fleet import SimulatedFleet
from simulation.inprocess import InProcessGrid, partition_node_config
from simulation.secaggplus_stages import can_drop_out

FEDFLEET = [sys.executable, "-c", "from fedfleet.cli import main; main()"]


def _profile(name: str, *, online: float, dropout: float) -> DeviceProfile:
    return register_profile(
        DeviceProfile(
            name=name,
            description="test device",
            seconds_per_example={},
            default_seconds_per_example=0.01,
            overhead_s=0.1,
            jitter=0.0,
            downlink_mbps=8.0,
            uplink_mbps=4.0,
            latency_ms=10.0,
            hourly_availability=(online,) * 24,
            dropout=dropout,
        )
    )


ON = _profile("test-app-on", online=1.0, dropout=0.0)
OFF = _profile("test-app-off", online=0.0, dropout=0.0)
FLAKY = _profile("test-app-flaky", online=1.0, dropout=1.0)


def _fleet(mix: tuple[tuple[str, float], ...], n: int = 8) -> SimulatedFleet:
    return SimulatedFleet(mix=mix, num_nodes=n, node_id_base=1000, task="t", seed=0)


def _grid(fleet: SimulatedFleet, *, app_kind: inprocess.AppKind) -> InProcessGrid:
    from flwr.clientapp import ClientApp

    return InProcessGrid(
        client_app=ClientApp(),
        num_nodes=8,
        run_config={},
        node_config_fn=partition_node_config(8),
        fleet=fleet,
        app_kind=app_kind,
    )


@pytest.fixture(autouse=True)
def _server_identity() -> None:
    """Messages are made as the ServerApp makes them (Flower asks whose task it is)."""
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID


def _secagg(stage: str, node: int) -> Message:
    content = RecordDict({RECORD_KEY_CONFIGS: ConfigRecord({Key.STAGE: stage})})
    return Message(content, node, "train", group_id="1")


def test_a_flower_app_is_shown_only_the_devices_online() -> None:
    fleet = _fleet((("test-app-on", 0.5), ("test-app-off", 0.5)))
    online = sorted(n for n in range(1000, 1008) if fleet.profile_of(n) is ON)
    assert 0 < len(online) < 8
    assert sorted(_grid(fleet, app_kind="flower").get_node_ids()) == online
    assert len(list(_grid(fleet, app_kind="fedfleet").get_node_ids())) == 8


def test_a_server_polling_for_nodes_waits_in_simulated_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import time

    monkeypatch.setattr(inprocess, "IDLE_POLL_S", 0.02)
    fleet = _fleet((("test-app-on", 1.0),))
    grid = _grid(fleet, app_kind="flower")
    grid.get_node_ids()
    grid.get_node_ids()  # at once (a strategy counting, then sampling): no time passes
    assert fleet.now_s == 0.0
    time.sleep(0.05)
    grid.get_node_ids()  # polled again after a wait with nothing sent: the next hour
    assert fleet.now_s == pytest.approx(3600.0)


@pytest.mark.parametrize(
    ("stage", "droppable"),
    [
        (Stage.SETUP, False),
        (Stage.SHARE_KEYS, False),
        (Stage.COLLECT_MASKED_VECTORS, True),
        (Stage.UNMASK, True),
    ],
)
def test_secaggplus_stages_where_a_device_may_be_lost(stage: str, droppable: bool) -> None:
    assert can_drop_out(_secagg(stage, 1000)) is droppable
    assert can_drop_out(Message(RecordDict(), 1000, "train", group_id="1"))


def test_a_device_drawn_to_drop_at_key_sharing_drops_at_the_masked_vectors() -> None:
    # Prepare: every device drops out at every message it may drop out at.
    fleet = _fleet((("test-app-flaky", 1.0),), n=4)
    nodes = range(1000, 1004)
    # Execute / Assert: setup and key sharing complete; the masked-vector stage loses all.
    for stage in (Stage.SETUP, Stage.SHARE_KEYS):
        assert [fleet.admit(_secagg(stage, n), can_drop=False) for n in nodes] == [None] * 4
    refusals = [fleet.admit(_secagg(Stage.COLLECT_MASKED_VECTORS, n)) for n in nodes]
    assert all(r is not None and "dropped out" in r for r in refusals)
    assert fleet.take_stats()["dropped"] == 4.0


# -- fl-dp-sa's pattern, end to end -------------------------------------------------------
PYPROJECT = """
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "sa-app"
version = "1.0.0"
dependencies = ["flwr>=1.22", "numpy"]

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "example"

[tool.flwr.app.components]
serverapp = "sa_app.server_app:app"
clientapp = "sa_app.client_app:app"

[tool.flwr.app.config]
num-server-rounds = 3
fraction-fit = 0.5
num-shares = 7
reconstruction-threshold = 4
"""

SERVER_APP = '''
"""SecAgg+ and client-side DP clipping with Flower's legacy workflow (fl-dp-sa style)."""
import numpy as np
from flwr.common import Context, ndarrays_to_parameters
from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
from flwr.server.strategy import DifferentialPrivacyClientSideFixedClipping, FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    strategy = FedAvg(
        fraction_fit=cfg["fraction-fit"],
        fraction_evaluate=0.0,
        min_fit_clients=2,
        min_available_clients=2,
        initial_parameters=ndarrays_to_parameters([np.zeros(4, dtype=np.float32)]),
    )
    strategy = DifferentialPrivacyClientSideFixedClipping(
        strategy, noise_multiplier=0.1, clipping_norm=10.0, num_sampled_clients=10
    )
    legacy = LegacyContext(
        context=context, config=ServerConfig(num_rounds=cfg["num-server-rounds"]),
        strategy=strategy,
    )
    workflow = DefaultWorkflow(
        fit_workflow=SecAggPlusWorkflow(
            num_shares=cfg["num-shares"],
            reconstruction_threshold=cfg["reconstruction-threshold"],
        )
    )
    workflow(grid, legacy)
'''

CLIENT_APP = '''
"""A NumPyClient under secaggplus_mod and fixedclipping_mod."""
from flwr.client import NumPyClient
from flwr.client.mod import fixedclipping_mod, secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common import Context


class Client(NumPyClient):
    def __init__(self, pid):
        self.pid = pid

    def fit(self, parameters, config):
        return [parameters[0] + 0.01 * (self.pid + 1)], 10, {"train_loss": float(self.pid)}


def client_fn(context: Context):
    return Client(int(context.node_config["partition-id"])).to_client()


app = ClientApp(client_fn=client_fn, mods=[secaggplus_mod, fixedclipping_mod])
'''


def test_secaggplus_app_with_device_dropouts_never_breaks_flowers_workflow(
    tmp_path: Path,
) -> None:
    # Prepare: fl-dp-sa's pattern; rpi4 devices drop out 4% of messages, 10% offline.
    app = tmp_path / "sa-app"
    (app / "sa_app").mkdir(parents=True)
    (app / "pyproject.toml").write_text(PYPROJECT)
    (app / "sa_app" / "__init__.py").write_text("")
    (app / "sa_app" / "server_app.py").write_text(SERVER_APP)
    (app / "sa_app" / "client_app.py").write_text(CLIENT_APP)
    out = tmp_path / "run"
    env = dict(os.environ, FLWR_TELEMETRY_ENABLED="0", COLUMNS="200", OMP_NUM_THREADS="1")
    # Execute
    args = ["--app", str(app), "--clients", "60", "--devices", "cpu-x86=0.5,rpi4=0.5"]
    args += ["--app-workers", "0"]  # about SecAgg+, not workers (test_app_workers*.py)
    proc = subprocess.run(
        [*FEDFLEET, "simulate", *args, "--out", str(out), "--quiet"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    # Assert: no ClientApp failed (it was a KeyError in secaggplus_mod's unmask stage),
    # no offline device was sent anything, and round 1 lost nobody before its keys
    # were shared (setup and key sharing: the first two exchanges).
    assert proc.returncode == 0, proc.stderr
    assert "KeyError" not in proc.stderr
    rows = json.loads((out / "exchanges.json").read_text())["exchanges"]
    assert all(r["offline"] == 0 for r in rows), rows
    assert [r["errors"] for r in rows[:2]] == [0, 0], rows
    assert sum(r["dropped"] for r in rows) > 0, rows  # dropouts did happen, later
