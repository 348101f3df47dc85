"""``fedfleet rollout create|list`` and the OTA ``fedfleet fleet`` commands: bad input
gets one clear line on stderr and a non-zero exit; nothing is written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlmodel import Session, func, select
from typer.testing import CliRunner

from firmware_images.demo import build_demo_bundle
from fleet import migrate
from fleet.artifacts import ArtifactStore
from fleet.db import make_engine
from fleet.models.ota import Rollout
from simulation.fleet_devices import enroll_devices, register_bundle


@pytest.fixture
def fleet_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, int]:
    url = f"sqlite:///{tmp_path / 'fleet.db'}"
    monkeypatch.setenv("FEDFLEET_FLEET_DATA_DIR", str(tmp_path))
    engine = make_engine(url)
    migrate.upgrade(engine)
    enroll_devices(engine, count=4, group="wards", target="cpu-x86")
    bundle = build_demo_bundle(private_key=Ed25519PrivateKey.generate(), version="v1")
    model = register_bundle(
        engine,
        ArtifactStore(tmp_path / "artifacts"),
        bundle=bundle.data,
        task="t",
        target="cpu-x86",
    )
    engine.dispose()
    return url, model


def _rollouts(url: str) -> int:
    engine = make_engine(url)
    with Session(engine) as session:
        count = session.exec(select(func.count()).select_from(Rollout)).one()
    engine.dispose()
    return int(count)


def test_rollout_create_and_list(fleet_db: tuple[str, int]) -> None:
    from fleet.ota.cli import rollout_app

    url, model = fleet_db
    runner = CliRunner()
    created = runner.invoke(
        rollout_app,
        [
            "create",
            "--model",
            str(model),
            "--group",
            "wards",
            "--waves",
            "25,50,100",
            "--max-failure-rate",
            "0.1",
            "--database-url",
            url,
        ],
    )
    assert created.exit_code == 0, created.output
    assert "3 waves (1, 1, 2 devices)" in created.output
    listed = runner.invoke(rollout_app, ["list", "--database-url", url])
    assert listed.exit_code == 0 and "running" in listed.output and "0/4 installed" in listed.output


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--waves", "5,x,100"], "--waves"),
        (["--waves", "50,25,100"], "increase"),
        (["--max-failure-rate", "2"], "--max-failure-rate"),
        (["--group", "nowhere"], "group 'nowhere' does not exist"),
    ],
)
def test_rollout_create_refuses_bad_input_with_one_line(
    fleet_db: tuple[str, int], args: list[str], words: str
) -> None:
    from fleet.ota.cli import rollout_app

    url, model = fleet_db
    base = ["create", "--model", str(model), "--group", "wards", "--database-url", url]
    result = CliRunner().invoke(rollout_app, [*base, *args])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and words in lines[0]
    assert "Traceback" not in result.output
    assert _rollouts(url) == 0


def test_simulate_devices_and_mqtt_refuse_missing_files(tmp_path: Path) -> None:
    from fedfleet.cli import build_app

    app = build_app()  # the root mounts the OTA and simulator commands in `fedfleet fleet`
    url = f"sqlite:///{tmp_path / 'f.db'}"
    runner = CliRunner()
    sim = runner.invoke(
        app,
        [
            "fleet",
            "simulate-devices",
            "--count",
            "2",
            "--public-key",
            str(tmp_path / "none.pub"),
            "--database-url",
            url,
        ],
    )
    assert sim.exit_code == 2 and "--public-key" in sim.output
    count = runner.invoke(app, ["fleet", "simulate-devices", "--count", "0", "--database-url", url])
    assert count.exit_code == 2 and "--count" in count.output
    service = runner.invoke(
        app, ["fleet", "mqtt", "--password-file", str(tmp_path / "nope"), "--database-url", url]
    )
    assert service.exit_code == 2 and "broker-config" in service.output


def _one_error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), output
    assert "Traceback" not in output
    return lines[0]


@pytest.mark.slow
def test_rollout_show_pause_resume_abort_against_a_real_fleet_server(
    fleet_server: Any, new_token: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fleet.models.auth import Role
    from fleet.ota.cli import rollout_app

    # Prepare: a real `fleet serve`, 4 devices, a rollout of two waves, tokens.
    engine = make_engine(fleet_server.database_url)
    devices = enroll_devices(engine, count=4, group="wards", target="cpu-x86")
    bundle = build_demo_bundle(private_key=Ed25519PrivateKey.generate(), version="v1")
    model = register_bundle(
        engine,
        ArtifactStore(fleet_server.data_dir / "artifacts"),
        bundle=bundle.data,
        task="t",
        target="cpu-x86",
    )
    operator, viewer = new_token(engine, Role.operator), new_token(engine, Role.viewer)
    engine.dispose()
    runner = CliRunner()
    url = ["--fleet-url", fleet_server.base_url]
    monkeypatch.setenv("FEDFLEET_FLEET_DATA_DIR", str(fleet_server.data_dir))
    created = runner.invoke(
        rollout_app,
        ["create", "--model", str(model), "--group", "wards", "--waves", "50,100"],
    )
    assert created.exit_code == 0, created.output
    rollout = created.output.split(":", 1)[0].removeprefix("rollout ")
    monkeypatch.setenv("FEDFLEET_TOKEN", operator)

    # Execute + Assert: show lists both waves' devices and who is waited for.
    shown = runner.invoke(rollout_app, ["show", rollout, *url])
    assert shown.exit_code == 0, shown.output
    rows = [line.split("\t") for line in shown.output.splitlines()[2:-1]]
    assert sorted(r[1] for r in rows) == sorted(d.device_id for d in devices)
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
    monkeypatch.setenv("FEDFLEET_TOKEN", viewer)
    assert runner.invoke(rollout_app, ["show", rollout, *url]).exit_code == 0
    refused = runner.invoke(rollout_app, ["pause", rollout, *url])
    assert refused.exit_code == 1 and "operator" in _one_error_line(refused.output)
    monkeypatch.delenv("FEDFLEET_TOKEN")
    unset = runner.invoke(rollout_app, ["show", rollout, *url])
    assert "FEDFLEET_TOKEN is not set" in _one_error_line(unset.output)
