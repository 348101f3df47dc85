"""Silo deployment end to end: a real TLS SuperLink with SuperNode authentication and
three sites as separate processes on 127.0.0.1, sharing one federation (module fixture).

Tests run in file order: the coordinator-crash test comes last because it kills and
restarts the shared coordinator.
"""

from __future__ import annotations

import hashlib
import json
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))

from fleet_server import create_token, fleet_fixtures
from silo_testkit import TASK, SiloFederation, free_port, kill_group, wait_for

from coordinator.app import central_evaluate_fn, initial_arrays
from coordinator.certs import create_dev_ca
from coordinator.cli import run_app
from coordinator.config import RunConfig
from coordinator.run_state import RunState
from edge_client.audit import AuditLog
from edge_client.site import init_site
from edge_client.site_cli import app as site_app
from edge_client.site_config import SiteConfig
from fleet.db import make_engine
from privacy.ledger import PrivacyLedger

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

BASE_RUN = {
    "task": TASK,
    "sites": 3,
    "min-sites": 2,
    "num-server-rounds": 3,
    "learning-rate": 0.05,
    "batch-size": 16,
    "seed": 7,
}

# The main run trains with DP-SGD at every site (privacy ledger, Opacus) and secure
# aggregation; each site's budget is its site.toml policy (ε=8 per task).
PRIVACY: dict[str, object] = {"secagg": True, "dp": "local", "dp-epsilon": 4.0}


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SiloFederation]:
    federation = SiloFederation(tmp_path_factory.mktemp("silo"))
    try:
        yield federation.start()
    finally:
        federation.stop()


def initial_accuracy(seed: int) -> float:
    config = RunConfig(task=TASK, seed=seed)
    return float(central_evaluate_fn(config)(0, initial_arrays(config))["accuracy"])


def test_untrusted_connections_are_refused(fed: SiloFederation, tmp_path: Path) -> None:
    """An unregistered key, a wrong CA and plaintext all fail; registered sites connect."""
    # Prepare: a site whose key was never registered, a CA the coordinator does not use.
    stranger = init_site(name="stranger", out_dir=tmp_path / "stranger")
    other_ca = create_dev_ca(tmp_path / "other-ca")
    own_ca = fed.root / "certs" / "ca.crt"
    link = f"127.0.0.1:{fed.port}"
    base = [
        str(Path(sys.executable).parent / "flower-supernode"),
        "--superlink",
        link,
        "--max-retries",
        "1",
    ]
    runs = {
        "unregistered": [
            *base,
            "--root-certificates",
            str(own_ca),
            "--auth-supernode-private-key",
            str(stranger.private_key),
        ],
        "wrong-ca": [
            *base,
            "--root-certificates",
            str(other_ca.ca_cert),
            "--auth-supernode-private-key",
            str(fed.sites[0].dir / f"{fed.sites[0].name}.key"),
        ],
        "plaintext": [*base, "--insecure"],
    }
    # Execute
    procs = {
        name: fed.start_supernode([*cmd, "--port", str(free_port())], tmp_path / f"{name}.log")
        for name, cmd in runs.items()
    }
    codes = {name: p.wait(timeout=180) for name, p in procs.items()}
    logs = {name: (tmp_path / f"{name}.log").read_text() for name in runs}
    # Assert: each exits non-zero for the right reason
    assert all(code != 0 for code in codes.values()), codes
    assert "Failed to activate SuperNode" in logs["unregistered"]
    assert "CERTIFICATE_VERIFY_FAILED" in logs["wrong-ca"]
    assert "could not establish a connection" in logs["plaintext"]
    # a raw plaintext HTTP request to the SuperLink gets no HTTP answer either
    with pytest.raises(httpx.HTTPError):
        httpx.post(f"http://{link}/v1/fleet/activate-node", timeout=5)
    # and the SuperLink's log names the refused key
    superlink_log = (fed.settings.state_dir / "superlink.log").read_text()
    assert "No SuperNode found with the given public key" in superlink_log


def test_three_rounds_with_tls_and_auth_improve_accuracy(fed: SiloFederation) -> None:
    # Execute
    state = fed.submit({**BASE_RUN, **PRIVACY})
    fed.wait_finished(state, timeout=600)
    # Assert: three rounds, all three sites in each, accuracy up from the initial model
    rounds = state.rounds()
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert all(r["clients"] == 3 and r["applied"] for r in rounds), rounds
    assert rounds[-1]["accuracy"] > initial_accuracy(BASE_RUN["seed"]) + 0.1
    assert rounds[-1]["accuracy"] >= 0.85
    # every site audited what it sent for this run, and the chain verifies
    for site in fed.sites:
        entries = [
            e
            for e in AuditLog.for_site(SiteConfig.load(site.config)).entries()
            if e["kind"] == "reply" and e["type"].startswith("train")
        ]
        assert len({e["round"] for e in entries}) == 3, site.name
        assert all(len(e["sha256"]) == 64 and e["size"] > 0 for e in entries)
        assert AuditLog.for_site(SiteConfig.load(site.config)).verify().ok
    assert "round 3/3 finished" in fed.status(state.run_id)
    if PRIVACY.get("dp") == "local":  # every site's own ledger shows ε spent, within budget
        for site in fed.sites:
            config = SiteConfig.load(site.config)
            ledger = PrivacyLedger.in_state_dir(config.state_dir, site=config.name)
            spent = ledger.spent(task=TASK, delta=config.policy.delta)
            assert 0 < spent <= config.policy.epsilon, (site.name, spent)


def test_tampered_audit_line_is_detected(fed: SiloFederation) -> None:
    site = fed.sites[0]
    runner = CliRunner()
    ok = runner.invoke(site_app, ["audit", "--config", str(site.config), "--verify"])
    assert ok.exit_code == 0, ok.output
    lines = site.audit.read_text().splitlines()
    original = site.audit.read_text()
    try:
        entry = json.loads(lines[1])
        entry["size"] = entry["size"] // 2  # claim less left the site
        lines[1] = json.dumps(entry, sort_keys=True, separators=(",", ":"))
        site.audit.write_text("\n".join(lines) + "\n")
        bad = runner.invoke(site_app, ["audit", "--config", str(site.config), "--verify"])
    finally:
        site.audit.write_text(original)
    assert bad.exit_code == 1
    assert "line 2" in bad.output


def test_task_outside_allowlist_is_refused_and_recorded(fed: SiloFederation) -> None:
    state = fed.submit(
        {**BASE_RUN, "task": "synthetic-logreg", "num-server-rounds": 1, "round-timeout": 120}
    )
    fed.wait_finished(state, timeout=300)
    rounds = state.rounds()
    assert rounds[0]["applied"] is False and rounds[0]["refused"] == 3
    refusals = state.refusals()
    assert len(refusals) == 3
    assert all("not on site" in r["reason"] and "allowlist" in r["reason"] for r in refusals)
    status = fed.status(state.run_id)
    assert "refused in round 1 by site-" in status


def test_finished_run_registers_its_model_and_drift_retrains_it_warm(
    fed: SiloFederation, tmp_path: Path
) -> None:
    """Journey 3.5 and the closed loop: `run submit --register` registers the finished
    run's model with its lineage in a real fleet; a drift event on that model becomes a
    fleet run that `run submit --retrain` executes from the model's own weights, and the
    retrained model lands in the same fleet run with the first version as its parent."""
    with fleet_fixtures().running_server(tmp_path / "fleet") as server:
        token = create_token(server, "operator", cwd=tmp_path)
        env = {"FEDFLEET_URL": server.base_url, "FEDFLEET_TOKEN": token}
        # A missing token is refused before anything is submitted.
        runs_before = len(list(fed.settings.state_dir.glob("runs/*")))
        run_toml = tmp_path / "run.toml"
        run_toml.write_text(f'[run]\ntask = "{TASK}"\nnum-server-rounds = 1\n')
        coordinator = str(fed.coordinator_toml)
        refused = fed.runner.invoke(
            run_app,
            ["submit", "--config", str(run_toml), "--register", "--coordinator", coordinator],
            env={"FEDFLEET_URL": server.base_url, "FEDFLEET_TOKEN": ""},
        )
        assert refused.exit_code != 0 and "FEDFLEET_TOKEN" in refused.output
        assert len(list(fed.settings.state_dir.glob("runs/*"))) == runs_before

        # 1. A run registers its model.
        state = fed.submit({**BASE_RUN, "num-server-rounds": 1}, "--register", env=env)
        version = int(fed.last_stdout.strip().splitlines()[-1])
        assert state.finished
        api = httpx.Client(
            base_url=f"{server.base_url}/api/v1",
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        model = api.get(f"/models/{version}").json()
        run = api.get(f"/runs/{model['source_run_id']}").json()

        # 2. Devices report drift on it (the event as the fleet's drift check writes it);
        #    the admin starts a retraining run from the event through the API.
        engine = make_engine(server.database_url)
        event_id = fleet_fixtures().record_drift_event(engine, version, score=0.41)
        engine.dispose()
        created = api.post(f"/drift-events/{event_id}/runs")
        assert created.status_code == 201, created.text
        fleet_run = created.json()["id"]

        # 3. The coordinator executes it warm and registers the result into it.
        retrained = fed.submit(
            {**BASE_RUN, "num-server-rounds": 1}, "--retrain", str(fleet_run), env=env
        )
        new_version = int(fed.last_stdout.strip().splitlines()[-1])
        again = fed.runner.invoke(
            run_app,
            ["submit", "--config", str(run_toml), "--retrain", str(fleet_run), "-c", coordinator],
            env=env,
        )
        new_model = api.get(f"/models/{new_version}").json()
        fleet_run_doc = api.get(f"/runs/{fleet_run}").json()
        api.close()

    assert model["task"] == TASK and model["source_round"] == 1
    assert model["metrics"]["final_accuracy"] == pytest.approx(state.rounds()[-1]["accuracy"])
    (checkpoint,) = [a for a in model["artifacts"] if a["format"] == "torch"]
    model_pt = state.run_dir / "model.pt"
    assert checkpoint["sha256"] == hashlib.sha256(model_pt.read_bytes()).hexdigest()
    assert run["status"] == "completed" and run["final_model_version_id"] == version

    # The retraining run started from exactly the deployed model's weights.
    initial = Path(retrained.run_config["initial-model"])
    assert hashlib.sha256(initial.read_bytes()).hexdigest() == checkpoint["sha256"]
    assert retrained.finished
    assert new_model["parent_id"] == version and new_model["source_run_id"] == fleet_run
    assert fleet_run_doc["status"] == "completed"
    assert fleet_run_doc["final_model_version_id"] == new_version
    # A retraining run is executed once.
    assert again.exit_code != 0 and "not 'created'" in again.output


def test_site_killed_mid_round_rejoins_next_round(fed: SiloFederation) -> None:
    victim = fed.sites[2]
    before = victim.log.read_text().count("Receiving: train message")
    # Flower counts a crashed SuperNode online until two heartbeat intervals (60 s) pass,
    # then answers its pending instruction with an error: round 1 ends there, without it,
    # or at the round timeout (65 s: just past that expiry; a normal round here takes
    # 4-18 s at load 9). Enough short rounds after round 1 for the restarted site to be
    # let back in: Flower refuses its new session until the old one expires, then `site
    # join` retries every 5 s; seen back in round 2 or 3 (rounds of 3-7 s), so 8 rounds
    # leave it 7 rounds (>= 28 s) to rejoin and more to stay.
    state = fed.submit({**BASE_RUN, "round-timeout": 65, "num-server-rounds": 8})

    def received_round_one_instruction() -> bool:
        return victim.log.read_text().count("Receiving: train message") >= before + 1

    # Execute: kill -9 the site's whole process tree once it holds round 1's instruction
    wait_for(
        received_round_one_instruction, timeout=300, what="round 1 to reach the victim", poll=0.2
    )
    assert victim.process is not None
    kill_group(victim.process, signal.SIGKILL)
    fed.start_site(victim)  # `site join` retries until the coordinator lets it back in
    fed.wait_finished(state, timeout=600)
    # Assert: round 1 met the quorum (2 of 3) without it; it trained again afterwards
    rounds = state.rounds()
    assert rounds[0]["clients"] == 2 and rounds[0]["failures"] == 1, rounds
    assert all(r["applied"] for r in rounds)
    back_from = next(i for i, r in enumerate(rounds) if i > 0 and r["clients"] == 3)
    assert all(r["clients"] == 3 for r in rounds[back_from:]), rounds  # and it stays
    flower_run = state.flower_runs[-1]
    back = [
        e
        for e in AuditLog.for_site(SiteConfig.load(victim.config)).entries()
        if e["run"] == flower_run and e["kind"] == "reply" and e["type"] == "train"
    ]
    assert [e["round"] for e in back] == [r["round"] for r in rounds if r["clients"] == 3]
    assert "retrying" in victim.log.read_text()  # it was refused while its old session lived


def test_coordinator_killed_then_resumed_equals_uninterrupted_run(fed: SiloFederation) -> None:
    run = {**BASE_RUN, "num-server-rounds": 2, "round-timeout": 120, "seed": 11}
    reference = fed.wait_finished(fed.submit(run), timeout=600)
    state = fed.submit(run)
    wait_for(
        lambda: state.completed_rounds >= 1 and state.status().get("round") == 2,
        timeout=300,
        what="round 2 to start",
        poll=0.2,
    )
    # Execute: kill -9 the coordinator's process group (SuperLink, SuperExec, ServerApp)
    assert fed.coordinator is not None
    kill_group(fed.coordinator, signal.SIGKILL)
    completed_at_crash = state.completed_rounds
    fed.start_coordinator()
    output = fed.resume(state.run_id)
    assert f"resumes after round {completed_at_crash}" in output
    fed.wait_finished(state, timeout=600)
    # Assert: rounds 1..2 once each, and the final model equals the uninterrupted run's
    assert [r["round"] for r in state.rounds()] == [1, 2]
    assert len(RunState.load(fed.settings.state_dir, state.run_id).flower_runs) == 2
    ref_model = torch.load(reference.run_dir / "model.pt", weights_only=True)
    model = torch.load(state.run_dir / "model.pt", weights_only=True)
    assert ref_model.keys() == model.keys()
    # Same participants and the same replies as the uninterrupted run, round by round
    # (a difference here names the cause of a model that differs below).
    took_part = [(r["round"], r["clients"], r.get("failures")) for r in state.rounds()]
    assert took_part == [(r["round"], r["clients"], r.get("failures")) for r in reference.rounds()]
    assert all(torch.equal(ref_model[k], model[k]) for k in ref_model), (
        state.rounds(),
        reference.rounds(),
    )


def test_sites_measuring_energy_report_it_per_round(fed: SiloFederation) -> None:
    # Prepare: every site turns codecarbon on in its own site.toml (read per message).
    pytest.importorskip("codecarbon")
    originals = {site.config: site.config.read_text() for site in fed.sites}
    for path, text in originals.items():
        path.write_text(text.replace("codecarbon = false", "codecarbon = true"))
    try:
        # Execute: a plain run (no secure aggregation: its stages are not measured)
        state = fed.submit({**BASE_RUN, "num-server-rounds": 2})
        fed.wait_finished(state, timeout=600)
    finally:
        for path, text in originals.items():
            path.write_text(text)
    # Assert: each round's energy and CO2, summed over the three sites' measurements
    rounds = state.rounds()
    assert [r["round"] for r in rounds] == [1, 2]
    for r in rounds:
        assert r["clients"] == 3
        assert r["energy_kwh"] > 0 and r["co2_g"] > 0, r
        assert 100 < r["co2_g"] / r["energy_kwh"] < 1000  # codecarbon's DEU average, g/kWh
