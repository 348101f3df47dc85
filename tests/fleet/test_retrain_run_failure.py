"""A retraining run that fails on the coordinator ends ``failed`` in the fleet (it stayed
``running`` for ever: the dashboard showed it running and nothing ended it). A real
`fleet serve`; the coordinator's Flower side is replaced by a run that fails in round 1."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from fleet.artifacts import ArtifactStore
from fleet.audit import Actor
from fleet.crud.registry import add_artifact, register_model
from fleet.db import make_engine, session_scope
from fleet.models.registry import ArtifactFormat, ModelVersionCreate

ACTOR = Actor(name="test", role="operator", source="cli")


def _deployed_model(server: Any) -> int:
    """A registered digits-cnn version with a torch checkpoint in the server's store."""
    engine = make_engine(server.database_url)
    stored = ArtifactStore(server.data_dir / "artifacts").save(
        io.BytesIO(b"weights"), max_bytes=1 << 20
    )
    with session_scope(engine, write=True) as session:
        model = register_model(session, ModelVersionCreate(task="digits-cnn"), actor=ACTOR)
        add_artifact(
            session,
            model,
            format=ArtifactFormat.torch,
            target="any",
            filename="model.pt",
            size_bytes=stored.size_bytes,
            sha256=stored.sha256,
            signature=None,
            actor=ACTOR,
        )
        model_id = model.id or 0
    engine.dispose()
    return model_id


@pytest.mark.slow
def test_a_retraining_run_failing_on_the_coordinator_ends_failed_in_the_fleet(
    fleet_server: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    drift_event: Any,
    new_token: Any,
) -> None:
    import coordinator.cli as cli
    from coordinator.cli import run_app
    from fleet.models.auth import Role

    # Prepare: a drift event on a deployed version, and its retraining run (created).
    engine = make_engine(fleet_server.database_url)
    token = new_token(engine, Role.operator)
    event = drift_event(engine, _deployed_model(fleet_server))
    engine.dispose()
    api = httpx.Client(
        base_url=f"{fleet_server.base_url}/api/v1",
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    created = api.post(f"/drift-events/{event}/runs")
    assert created.status_code == 201, created.text
    run_id = created.json()["id"]
    (tmp_path / "run.toml").write_text("[run]\nnum-server-rounds = 1\n")
    (tmp_path / "c.toml").write_text(
        '[superlink]\naddress = "127.0.0.1:9092"\ncontrol-address = "127.0.0.1:9093"\n'
    )
    # The Flower side: the run is accepted, then fails in round 1.
    monkeypatch.setattr(cli, "_preflight", lambda settings, run_config: None)
    monkeypatch.setattr(cli, "_flwr_run", lambda settings, state: 1)
    monkeypatch.setattr(
        cli, "_failure", lambda settings, state, ask_flower: "round 1: every site refused"
    )

    # Execute: what the autopilot runs for it.
    files = ["--config", str(tmp_path / "run.toml"), "-c", str(tmp_path / "c.toml")]
    result = CliRunner().invoke(
        run_app,
        ["submit", *files, "--retrain", str(run_id)],
        env={"FEDFLEET_URL": fleet_server.base_url, "FEDFLEET_TOKEN": token},
    )

    # Assert: the run's own line and exit 1; the fleet run ended `failed`, not `running`.
    assert result.exit_code == 1, result.output
    assert "failed: round 1: every site refused" in result.output
    run = api.get(f"/runs/{run_id}").json()
    api.close()
    assert run["status"] == "failed" and run["finished_at"] is not None
