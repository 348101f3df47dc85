"""Silo deployment end to end: a real TLS SuperLink with SuperNode authentication and
three sites as separate processes on 127.0.0.1, sharing one federation (module fixture).

Tests run in file order: the coordinator-crash test kills and restarts the shared
coordinator, so the tests after it use the restarted one. The main run (3 rounds, DP-SGD and
secure aggregation; module fixture ``dp_run``) is checked by the accuracy test and by
``fedfleet report`` of it, which runs right after it, before other runs add to the
sites' ledgers and audit logs.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))

from report_oracle import check_page, run_resolvers, site_resolver
from silo_testkit import TASK, SiloFederation, free_port, kill_group, wait_for

from coordinator.app import central_evaluate_fn, initial_arrays
from coordinator.certs import create_dev_ca
from coordinator.config import RunConfig
from coordinator.run_state import RunState
from edge_client.audit import AuditLog
from edge_client.site import init_site
from edge_client.site_cli import app as site_app
from edge_client.site_config import SiteConfig
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


@pytest.fixture(scope="module")
def dp_run(fed: SiloFederation) -> RunState:
    """The main run, finished: 3 rounds, DP-SGD and secure aggregation at every site."""
    return fed.wait_finished(fed.submit({**BASE_RUN, **PRIVACY}), timeout=600)


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


def test_three_rounds_with_tls_and_auth_improve_accuracy(
    fed: SiloFederation, dp_run: RunState
) -> None:
    # Execute: the main run (fixture ``dp_run``)
    state = dp_run
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


def test_a_deployment_run_report_names_each_site_from_its_own_files(
    fed: SiloFederation, dp_run: RunState, tmp_path: Path
) -> None:
    """``fedfleet report`` of the main run (TLS SuperLink, three authenticated sites,
    secure aggregation, DP-SGD at every site) names each site with the rounds its own
    audit log shows, ε from its own ledger against its own budget, and its log's verdict
    — every value checked against the run folder and the site's files (report_oracle)."""
    # Prepare: the finished main run; the rounds it ran, from its own metrics.
    state = dp_run
    sites = [site.config for site in fed.sites]
    ran = [r["round"] for r in state.rounds()]
    assert len(ran) == BASE_RUN["num-server-rounds"]
    # Execute
    out = tmp_path / "report.html"
    site_args = [arg for config in sites for arg in ("--site", str(config))]
    done = subprocess.run(
        [str(Path(sys.executable).parent / "fedfleet"), "report", str(state.run_dir),
         "--out", str(out), *site_args],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    # Assert: every value against the run folder and the sites' own files.
    assert done.returncode == 0, done.stderr
    resolvers = run_resolvers(state.run_dir, Path(__file__).resolve().parents[2])
    resolvers["site"] = site_resolver(sites, flower_runs=state.flower_runs)
    page, problems = check_page(out.read_text(), resolvers)
    assert problems == []
    values = {v.src: v.value for v in page.values}
    for site in fed.sites:
        budget = SiteConfig.load(site.config).policy.epsilon  # the site's own (site.toml)
        assert values[f"site:{site.name}/verdict/ok"] is True
        assert values[f"site:{site.name}/rounds"] == ran
        assert values[f"site:{site.name}/budget/{TASK}/completed"] == len(ran)
        assert 0 < values[f"site:{site.name}/budget/{TASK}/spent"] <= budget
    assert values["metrics:/config/secagg"] is True and values["metrics:/config/dp"] == "local"
    assert values["run:app_sha256"] is not None  # the app the run submitted is pinned


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


def _delivered(fed: SiloFederation, state: RunState, kind: str) -> dict[str, dict[int, dict]]:
    """Per site, by round: the energy its audit log says a ``kind`` reply delivered."""
    flower_run = state.flower_runs[-1]
    return {
        site.name: {
            e["round"]: e["energy"]
            for e in site.audit_log().entries()
            if e["run"] == flower_run and e["type"] == kind and e.get("energy")
        }
        for site in fed.sites
    }


def test_sites_measuring_energy_report_it_per_round(fed: SiloFederation) -> None:
    # Prepare: every site turns codecarbon on in its own site.toml (read per message).
    pytest.importorskip("codecarbon")
    originals = {site.config: site.config.read_text() for site in fed.sites}
    for path, text in originals.items():
        path.write_text(text.replace("codecarbon = false", "codecarbon = true"))
    try:
        # Execute: a round under secure aggregation (every stage measured at the sites;
        # plain rounds' per-site values: tests/edge_client/test_energy.py)
        state = fed.submit({**BASE_RUN, "num-server-rounds": 1, "secagg": True})
        fed.wait_finished(state, timeout=600)
    finally:
        for path, text in originals.items():
            path.write_text(text)
    # Assert: the round's energy and CO2, the sum of the three sites' measurements
    (r,) = state.rounds()
    assert r["clients"] == 3
    assert r["energy_kwh"] > 0 and r["co2_g"] > 0, r
    assert 100 < r["co2_g"] / r["energy_kwh"] < 1000  # codecarbon's DEU average, g/kWh
    # Only the sum reached the coordinator, and it equals what each site's audit log
    # says it put inside its masked input
    carbon = json.loads((state.run_dir / "metrics.json").read_text())["carbon"]
    sent = _delivered(fed, state, "train.secagg")
    assert carbon["source"] == "codecarbon" and set(sent) == {s.name for s in fed.sites}
    assert carbon["per_site"] == {} and carbon["masked_rounds"] == 1
    assert carbon["per_round"][0]["sites"] == 3
    assert {s[1]["how"] for s in sent.values()} == {"masked"}
    assert carbon["energy_kwh"] == pytest.approx(sum(s[1]["kwh"] for s in sent.values()))
    assert carbon["co2_g"] == pytest.approx(sum(s[1]["co2_g"] for s in sent.values()))
    assert r["energy_kwh"] == pytest.approx(carbon["energy_kwh"])


def test_a_run_no_site_has_budget_for_is_held_before_round_1(fed: SiloFederation) -> None:
    # Prepare: each site's own budget is ε=8 (site.toml); this run would spend 50.
    def ledgers() -> dict[str, int]:
        out = {}
        for site in fed.sites:
            config = SiteConfig.load(site.config)
            path = config.state_dir / "privacy_ledger.sqlite"
            out[site.name] = (
                len(PrivacyLedger(path, site=config.name).entries()) if path.exists() else 0
            )
        return out

    before = ledgers()

    # Execute: the pre-flight the autopilot's runs carry (`--retrain` sets it).
    state = fed.submit(
        {**BASE_RUN, "num-server-rounds": 1, "dp": "local", "dp-epsilon": 50.0,
         "budget-preflight": True, "round-timeout": 120}
    )  # fmt: skip
    wait_for(lambda: state.status().get("phase") == "failed", timeout=180, what="the hold")

    # Assert: held before round 1 with the count; nothing trained or reserved; each site
    # answered through the federation (an audited query.budget reply, one bit).
    error = state.status()["error"]
    assert "held by the budget pre-flight: 0 of 3 sites" in error and "needs 2" in error
    assert state.rounds() == [] and ledgers() == before
    flower_run = state.flower_runs[-1]
    for site in fed.sites:
        lines = [json.loads(line) for line in site.audit.read_text().splitlines() if line]
        asked = [e for e in lines if e.get("run") == flower_run and e.get("type") == "query.budget"]
        assert [e["kind"] for e in asked] == ["reply"], site.name
