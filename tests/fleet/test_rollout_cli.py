"""``fedfleet rollout ...`` and ``fedfleet fleet simulate-devices`` against a real
``fedfleet fleet serve`` with a token: the operator commands reach the fleet only through its
API. Bad input gets one clear line on stderr and a non-zero exit; nothing is written."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlmodel import Session, func, select
from typer.testing import CliRunner

from firmware_images.demo import build_demo_bundle
from firmware_images.keys import generate_keypair
from fleet.artifacts import ArtifactStore
from fleet.db import make_engine
from fleet.models.auth import Role
from fleet.models.ota import Rollout

# The fleet-database helpers of the end-to-end kit (tests/e2e/ota_testkit.py).
sys.path.insert(0, str(Path(__file__).parents[1] / "e2e"))
from ota_testkit import enroll_devices, register_bundle

FEDFLEET = os.path.join(os.path.dirname(sys.executable), "fedfleet")
pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Fleet:
    """A real fleet server with 4 devices in group ``wards``, a model and tokens."""

    server: Any
    model: int
    tokens: dict[Role, str]

    @property
    def url(self) -> list[str]:
        return ["--fleet-url", self.server.base_url]

    def rollouts(self) -> int:
        engine = make_engine(self.server.database_url)
        with Session(engine) as session:
            count = session.exec(select(func.count()).select_from(Rollout)).one()
        engine.dispose()
        return int(count)


@pytest.fixture(scope="module")
def fleet(module_fleet_server: Any) -> Iterator[Fleet]:
    engine = make_engine(module_fleet_server.database_url)
    enroll_devices(engine, count=4, group="wards", target="cpu-x86")
    bundle = build_demo_bundle(private_key=Ed25519PrivateKey.generate(), version="v1")
    model = register_bundle(
        engine,
        ArtifactStore(module_fleet_server.data_dir / "artifacts"),
        bundle=bundle.data,
        task="t",
        target="cpu-x86",
    )
    tokens = {role: _direct_token(engine, role) for role in Role}
    engine.dispose()
    yield Fleet(module_fleet_server, model, tokens)


def _direct_token(engine: Any, role: Role) -> str:
    """Test setup only: a token written straight into the server's database."""
    from fleet.audit import Actor
    from fleet.crud import tokens
    from fleet.db import session_scope

    with session_scope(engine, write=True) as session:
        secret, _ = tokens.create_token(
            session, name=role.value, role=role, actor=Actor("test", "admin", "cli")
        )
    return secret


@pytest.fixture
def as_role(monkeypatch: pytest.MonkeyPatch, fleet: Fleet) -> Any:
    def use(role: Role | None) -> None:
        if role is None:
            monkeypatch.delenv("FEDFLEET_TOKEN", raising=False)
        else:
            monkeypatch.setenv("FEDFLEET_TOKEN", fleet.tokens[role])

    monkeypatch.delenv("FEDFLEET_URL", raising=False)
    return use


def _one_error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), output
    assert "Traceback" not in output
    return lines[0]


def test_rollout_create_and_list_over_the_api(fleet: Fleet, as_role: Any) -> None:
    from fleet.ota.cli import rollout_app

    as_role(Role.operator)
    runner = CliRunner()
    before = fleet.rollouts()
    created = runner.invoke(
        rollout_app,
        [
            "create",
            *("--model", str(fleet.model), "--group", "wards", "--waves", "25,50,100"),
            *("--max-failure-rate", "0.1", *fleet.url),
            *("--max-accuracy-drop-points", "2", "--max-latency-ratio", "1.5"),
            *("--soak-s", "60"),
        ],
    )
    assert created.exit_code == 0, created.output
    assert "3 waves (1, 1, 2 devices)" in created.output
    assert "accuracy drop > points 2, p95 latency ratio > 1.5; soak 60 s" in created.output
    assert fleet.rollouts() == before + 1
    rollout = created.output.split(":", 1)[0].removeprefix("rollout ")
    as_role(Role.viewer)  # listing needs only a viewer
    listed = runner.invoke(rollout_app, ["list", *fleet.url])
    assert listed.exit_code == 0, listed.output
    row = next(line for line in listed.output.splitlines() if line.startswith(rollout + "\t"))
    assert "\twards\trunning\twave 1/3\t0/4 installed" in row
    # Abort it so later tests see the group free of a running rollout.
    as_role(Role.operator)
    assert runner.invoke(rollout_app, ["abort", rollout, *fleet.url]).exit_code == 0


@pytest.mark.parametrize(
    ("args", "words", "code"),
    [
        (["--waves", "5,x,100"], "--waves", 2),
        (["--waves", "50,25,100"], "increase", 2),
        (["--max-failure-rate", "2"], "--max-failure-rate", 2),
        (["--max-latency-ratio", "0.5"], "--max-latency-ratio", 2),
        (["--max-accuracy-drop-points", "101"], "--max-accuracy-drop-points", 2),
        (["--min-quality-devices", "1"], "--min-quality-devices", 2),
        (["--group", "nowhere"], "group 'nowhere' does not exist", 1),
        (["--model", "999"], "model version 999 is not registered", 1),
    ],
)
def test_rollout_create_refuses_bad_input_with_one_line(
    fleet: Fleet, as_role: Any, args: list[str], words: str, code: int
) -> None:
    from fleet.ota.cli import rollout_app

    as_role(Role.operator)
    before = fleet.rollouts()
    base = ["create", "--model", str(fleet.model), "--group", "wards", *fleet.url]
    result = CliRunner().invoke(rollout_app, [*base, *args])
    assert result.exit_code == code
    assert words in _one_error_line(result.output)
    assert fleet.rollouts() == before


def test_rollout_create_without_a_usable_token_or_fleet_is_one_line(
    fleet: Fleet, as_role: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fleet.ota.cli import rollout_app

    runner = CliRunner()
    create = ["create", "--model", str(fleet.model), "--group", "wards"]
    before = fleet.rollouts()
    as_role(None)
    unset = runner.invoke(rollout_app, [*create, *fleet.url])
    assert "FEDFLEET_TOKEN is not set" in _one_error_line(unset.output)
    assert "--bootstrap" in unset.output  # says how to make the first token
    as_role(Role.viewer)
    viewer = runner.invoke(rollout_app, [*create, *fleet.url])
    assert viewer.exit_code == 1 and "operator" in _one_error_line(viewer.output)
    monkeypatch.setenv("FEDFLEET_TOKEN", "ffk_not-a-token")
    bad = runner.invoke(rollout_app, [*create, *fleet.url])
    assert bad.exit_code == 1 and "HTTP 401" in _one_error_line(bad.output)
    as_role(Role.operator)
    away = runner.invoke(
        rollout_app, [*create, "--fleet-url", f"http://127.0.0.1:{_closed_port()}"]
    )
    assert away.exit_code == 1 and "cannot reach the fleet" in _one_error_line(away.output)
    assert fleet.rollouts() == before


def _closed_port() -> int:
    """A loopback port nothing listens on."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _simulate(count: int, *, public_key: Path, cwd: Path, env: dict[str, str]) -> Any:
    return subprocess.run(
        [
            *(FEDFLEET, "fleet", "simulate-devices", "--count", str(count), "--group", "sim-api"),
            *("--public-key", str(public_key), "--seconds", "1"),
        ],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_simulate_devices_enrols_over_the_api_and_writes_no_database(
    fleet: Fleet, tmp_path: Path
) -> None:
    # Prepare: an empty working folder, the fleet's address and an operator token.
    keys = generate_keypair(prefix=tmp_path / "fleet")
    work = tmp_path / "cwd"
    work.mkdir()
    headers = {"Authorization": f"Bearer {fleet.tokens[Role.viewer]}"}
    listed = f"{fleet.server.base_url}/api/v1/devices?group=sim-api&total=true"
    env = {
        **os.environ,
        "FEDFLEET_URL": fleet.server.base_url,
        "FEDFLEET_TOKEN": fleet.tokens[Role.operator],
    }
    env.pop("FEDFLEET_FLEET_DATABASE_URL", None)
    env.pop("FEDFLEET_FLEET_DATA_DIR", None)

    # Execute: two devices enrolled through the API, run against the loopback broker for 1 s.
    done = _simulate(2, public_key=keys.public, cwd=work, env=env)

    # Assert: the fleet lists them in the new group; their credentials are saved; no database.
    assert done.returncode == 0, done.stderr
    assert httpx.get(listed, headers=headers, timeout=5).json()["total"] == 2
    saved = (work / "sim-devices" / "devices.json").read_text()
    assert saved.count('"device_id"') == 2
    assert sorted(p.name for p in work.iterdir()) == ["sim-devices"]
    # An operator token is needed: without one, one line and nothing enrolled.
    env.pop("FEDFLEET_TOKEN")
    again = _simulate(3, public_key=keys.public, cwd=work, env=env)
    assert again.returncode == 1 and "FEDFLEET_TOKEN is not set" in _one_error_line(again.stderr)
    assert httpx.get(listed, headers=headers, timeout=5).json()["total"] == 2


def test_simulate_devices_and_mqtt_refuse_missing_files(tmp_path: Path) -> None:
    from fedfleet.cli import build_app

    app = build_app()  # the root mounts the OTA and simulator commands in `fedfleet fleet`
    url = f"sqlite:///{tmp_path / 'f.db'}"
    runner = CliRunner()
    sim = runner.invoke(
        app,
        ["fleet", "simulate-devices", "--count", "2", "--public-key", str(tmp_path / "none.pub")],
    )
    assert sim.exit_code == 2 and "--public-key" in sim.output
    count = runner.invoke(app, ["fleet", "simulate-devices", "--count", "0"])
    assert count.exit_code == 2 and "--count" in count.output
    service = runner.invoke(
        app, ["fleet", "mqtt", "--password-file", str(tmp_path / "nope"), "--database-url", url]
    )
    assert service.exit_code == 2 and "broker-config" in service.output


def test_operator_commands_never_create_a_database_in_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The old silent default: without a database URL these commands created or read
    ./fleet-data/fleet.db. Now they go over the API (or refuse), and write nothing."""
    from fedfleet.cli import build_app

    monkeypatch.chdir(tmp_path)
    for name in ("FEDFLEET_TOKEN", "FEDFLEET_FLEET_DATABASE_URL", "FEDFLEET_FLEET_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    pub = generate_keypair(prefix=tmp_path / "fleet").public
    app = build_app()
    runner = CliRunner()
    commands = [
        ["rollout", "create", "--model", "1", "--group", "wards"],
        ["rollout", "list"],
        ["fleet", "token", "create", "--role", "admin"],
        ["fleet", "token", "list"],
        ["fleet", "token", "revoke", "1"],
        ["fleet", "token", "create", "--bootstrap"],
        ["fleet", "simulate-devices", "--count", "1", "--public-key", str(pub)],
        ["fleet", "broker-config", "--out", "broker"],
    ]
    for args in commands:
        result = runner.invoke(app, args)
        assert result.exit_code != 0, args
        line = _one_error_line(result.output)
        assert "FEDFLEET_TOKEN is not set" in line or "--database-url" in line, (args, line)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fleet.key", "fleet.pub"]


def test_rollout_show_pause_resume_abort_against_a_real_fleet_server(
    fleet: Fleet, as_role: Any
) -> None:
    from fleet.ota.cli import rollout_app

    # Prepare: a rollout of two waves over the 4 devices of the fleet, created over the API.
    runner = CliRunner()
    url = fleet.url
    as_role(Role.operator)
    created = runner.invoke(
        rollout_app,
        ["create", "--model", str(fleet.model), "--group", "wards", "--waves", "50,100", *url],
    )
    assert created.exit_code == 0, created.output
    rollout = created.output.split(":", 1)[0].removeprefix("rollout ")

    # Execute + Assert: show lists both waves' devices and who is waited for.
    shown = runner.invoke(rollout_app, ["show", rollout, *url])
    assert shown.exit_code == 0, shown.output
    rows = [line.split("\t") for line in shown.output.splitlines()[2:-1]]
    assert len(rows) == 4
    assert sorted(r[3] for r in rows) == ["not_sent", "not_sent", "waiting", "waiting"]
    waiting = sorted(r[1] for r in rows if r[3] == "waiting")
    assert shown.output.splitlines()[-1] == "waiting for: " + ", ".join(waiting)

    paused = runner.invoke(rollout_app, ["pause", rollout, *url])
    assert paused.exit_code == 0 and ", paused, wave 1/2" in paused.output, paused.output
    again = runner.invoke(rollout_app, ["pause", rollout, *url])
    assert again.exit_code == 1 and "is paused" in _one_error_line(again.output)
    resumed = runner.invoke(rollout_app, ["resume", rollout, *url])
    assert resumed.exit_code == 0 and ", running," in resumed.output
    aborted = runner.invoke(rollout_app, ["abort", rollout, "--no-rollback", *url])
    assert aborted.exit_code == 0 and ", aborted," in aborted.output
    assert "kept on the new model" in aborted.output
    late = runner.invoke(rollout_app, ["resume", rollout, *url])
    assert "finished rollout cannot be resumed" in _one_error_line(late.output)
    missing = runner.invoke(rollout_app, ["show", "999", *url])
    assert missing.exit_code == 1 and "does not exist" in _one_error_line(missing.output)

    # A viewer token may read but not steer; no token at all is one line with the fix.
    as_role(Role.viewer)
    assert runner.invoke(rollout_app, ["show", rollout, *url]).exit_code == 0
    refused = runner.invoke(rollout_app, ["pause", rollout, *url])
    assert refused.exit_code == 1 and "operator" in _one_error_line(refused.output)
    as_role(None)
    unset = runner.invoke(rollout_app, ["show", rollout, *url])
    assert "FEDFLEET_TOKEN is not set" in _one_error_line(unset.output)
