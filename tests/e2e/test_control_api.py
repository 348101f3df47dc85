"""Issue 14, item 1: the Control API is not reachable by sites or strangers.

A real deployment on 127.0.0.1 (`certs create`, `coordinator up` with an operators'
listener, one site registered and joined with `site join`). A stranger holding only
``ca.crt`` — what every site holds — points Flower's own CLI at the coordinator's public
address and tries what the issue's attack did: register a node, list runs, run an app
whose ServerApp writes a file on the coordinator host. Each is refused and the SuperLink
(asked by the operator over loopback) has no new node and no new run. The operators'
listener takes only a certificate from `certs create-operator`. The operator's own
commands (`coordinator add-site`, `run submit/status/resume`) still work, and the site
still trains through the public address.
"""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))

from silo_testkit import TASK, SiloFederation, free_port, kill_group, wait_for

from coordinator.certs import create_operator_cert
from coordinator.cli import coordinator_app
from coordinator.run_state import RunState
from coordinator.superlink import CONNECTION, flwr_json, load_sites
from edge_client.site import init_site

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]

FLWR = str(Path(sys.executable).parent / "flwr")
RUN = {
    "task": TASK,
    "sites": 1,
    "min-sites": 1,
    "num-server-rounds": 2,
    "round-timeout": 120,
    "learning-rate": 0.05,
    "batch-size": 16,
    "seed": 3,
}

EVIL_SERVER = """
from pathlib import Path

Path({marker!r}).write_text("the stranger's ServerApp ran on the coordinator host")

from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

server = ServerApp()
client = ClientApp()
"""

EVIL_PYPROJECT = """[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "evilapp"
version = "1.0.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "stranger"

[tool.flwr.app.components]
serverapp = "evil:server"
clientapp = "evil:client"

[tool.flwr.app.config]
"""


@dataclass
class ControlFederation(SiloFederation):
    """The silo kit's federation plus the operators' listener (mutual TLS)."""

    operator_port: int = 0


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlFederation]:
    federation = ControlFederation(tmp_path_factory.mktemp("control"))
    federation.operator_port = free_port()
    create_operator_cert(federation.root / "certs", name="alice")
    try:
        federation.start(
            num_sites=1,
            superlink_extra=f'operator-address = "127.0.0.1:{federation.operator_port}"\n',
        )
        yield federation
    finally:
        federation.stop()


def _stranger_home(root: Path, address: str, ca_cert: Path) -> dict[str, str]:
    """An FLWR_HOME whose default connection is ``address`` over TLS with ``ca_cert``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.toml").write_text(
        '[superlink]\ndefault = "coord"\n\n[superlink.coord]\n'
        f'address = "{address}"\nroot-certificates = "{ca_cert}"\n'
    )
    env = dict(os.environ)
    env.update(FLWR_HOME=str(root), FLWR_TELEMETRY_ENABLED="0")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _flwr(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FLWR, *args], env=env, capture_output=True, text=True, timeout=180, check=False
    )


def _operator_view(fed: ControlFederation) -> tuple[list[int], list[int]]:
    """Run ids and node ids, asked over the loopback Control API as the operator."""
    settings = fed.settings
    runs = flwr_json(settings, ["ls", CONNECTION], timeout=120)["runs"]
    nodes = flwr_json(settings, ["supernode", "list", CONNECTION], timeout=120)["nodes"]
    return sorted(int(r["run-id"]) for r in runs), sorted(int(n["node-id"]) for n in nodes)


def test_stranger_with_only_ca_crt_cannot_register_list_or_run(
    fed: ControlFederation, tmp_path: Path
) -> None:
    # Prepare: the stranger's key, an app that leaves a mark wherever its ServerApp runs
    runs_before, nodes_before = _operator_view(fed)
    stranger = init_site(name="stranger", out_dir=tmp_path / "stranger")
    marker = tmp_path / "pwned"
    app = tmp_path / "evilapp"
    app.mkdir()
    (app / "pyproject.toml").write_text(EVIL_PYPROJECT)
    (app / "evil.py").write_text(EVIL_SERVER.format(marker=str(marker)))
    ca = fed.root / "certs" / "ca.crt"
    public = _stranger_home(tmp_path / "home-public", f"127.0.0.1:{fed.port}", ca)
    operators = _stranger_home(
        tmp_path / "home-operators",
        f"127.0.0.1:{fed.operator_port}",
        ca,
    )
    # Execute: the issue's attack, against the public address and the operators' listener,
    # and a SuperNode with no registered key, which registers itself over the Fleet API
    self_registering = fed.start_supernode(
        [
            str(Path(sys.executable).parent / "flower-supernode"),
            "--superlink",
            f"127.0.0.1:{fed.port}",
            "--root-certificates",
            str(ca),
            "--max-retries",
            "1",
            "--port",
            str(free_port()),
        ],
        tmp_path / "self-registering.log",
    )
    attempts = {
        "register": _flwr(public, "supernode", "register", str(stranger.public_key), "coord"),
        "ls": _flwr(public, "ls", "coord"),
        "run": _flwr(public, "run", str(app), "coord"),
        "operators-register": _flwr(
            operators, "supernode", "register", str(stranger.public_key), "coord"
        ),
        "operators-ls": _flwr(operators, "ls", "coord"),
    }
    # Assert: each refused, for the right reason (the SuperNode's registration thread dies
    # on the 403 while its process lives on: stop it once the refusal is logged)
    coordinator_log = fed.root / "coordinator.log"
    wait_for(
        lambda: "refused POST /v1/fleet/register-node" in coordinator_log.read_text(),
        timeout=180,
        what="the self-registering SuperNode to be refused",
    )
    kill_group(self_registering)
    for name, result in attempts.items():
        assert result.returncode != 0, (name, result.stdout, result.stderr)
    for name in ("register", "ls", "run"):
        output = attempts[name].stdout + attempts[name].stderr
        assert "only the Fleet API is served" in output, output
    # nothing changed on the SuperLink, and nothing of the stranger's ran
    assert _operator_view(fed) == (runs_before, nodes_before)
    assert stranger.public_key.read_text().split()[1] not in str(load_sites(fed.settings))
    assert not marker.exists()
    log = coordinator_log.read_text()
    assert "refused POST /v1/control/register-node" in log
    assert log.count("refused POST /v1/control/") >= 3


def test_operator_certificate_reaches_the_control_api_remotely(
    fed: ControlFederation,
) -> None:
    from flwr.proto.control_pb2 import ListNodesRequest, ListNodesResponse

    certs = fed.root / "certs"
    url = f"https://127.0.0.1:{fed.operator_port}/v1/control/list-nodes"
    body = ListNodesRequest().SerializeToString()
    headers = {"content-type": "application/protobuf", "accept": "application/protobuf"}

    def list_nodes(cert: tuple[str, str] | None) -> httpx.Response:
        context = ssl.create_default_context(cafile=str(certs / "ca.crt"))
        if cert is not None:
            context.load_cert_chain(*cert)
        with httpx.Client(verify=context, timeout=30) as client:
            return client.post(url, content=body, headers=headers)

    # Execute
    ok = list_nodes((str(certs / "operator-alice.crt"), str(certs / "operator-alice.key")))
    # Assert: the operator's certificate gets the Control API; the server's own
    # certificate (signed by the CA sites trust) does not
    assert ok.status_code == 200, ok.text
    nodes = ListNodesResponse.FromString(ok.content).nodes_info
    site_ids = {int(v["node-id"]) for v in load_sites(fed.settings).values()}
    assert {n.node_id for n in nodes} >= site_ids
    with pytest.raises(httpx.HTTPError):
        list_nodes((str(certs / "server.crt"), str(certs / "server.key")))
    with pytest.raises(httpx.HTTPError):
        list_nodes(None)


def test_operator_commands_still_work_and_the_site_trains_through_the_gateway(
    fed: ControlFederation, tmp_path: Path
) -> None:
    # coordinator add-site (flwr supernode register over loopback)
    newcomer = init_site(name="newcomer", out_dir=tmp_path / "newcomer")
    added = CliRunner().invoke(
        coordinator_app,
        [
            "add-site",
            "newcomer",
            "--public-key",
            str(newcomer.public_key),
            "-c",
            str(fed.coordinator_toml),
        ],
    )
    assert added.exit_code == 0, added.output
    node_id = int(added.output.split("as node")[1])
    assert node_id in _operator_view(fed)[1]
    # run submit, run resume (stops the first Flower run, resubmits), run status
    state = fed.submit(RUN)
    resumed = fed.resume(state.run_id)
    assert "resumes after round" in resumed
    fed.wait_finished(state, timeout=600)
    assert f"round {RUN['num-server-rounds']}/{RUN['num-server-rounds']} finished" in (
        fed.status(state.run_id)
    )
    assert len(RunState.load(fed.settings.state_dir, state.run_id).flower_runs) == 2
    # site-0 dials only the public address: it trained every round through the gateway
    assert all(r["clients"] == 1 and r["applied"] for r in state.rounds()), state.rounds()
    site_config = fed.sites[0].config.read_text()
    assert f'address = "127.0.0.1:{fed.port}"' in site_config
