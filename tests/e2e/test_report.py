"""``fedfleet report RUN``: every value on the page against its source, in real Chromium.

A real ``fedfleet simulate`` (local DP, secure aggregation, a fairness audit on
credit-scoring's sensitive attribute, energy and CO2 on the shipped carbon trace) makes the
run folder, so every section of the report comes from what a run really writes.
The lineage test goes through a real ``fleet serve``: ``fedfleet model register``, a real
signed bundle (``fedfleet image build --upload``), a rollout, devices' heartbeats; and
two real sites' audit logs and ledgers (one tampered), checked through the sites' own
commands. ``report_oracle`` reads each source again on its own and compares every
``data-src`` value. Screenshots land in ``$REPORT_SCREENSHOT_DIR`` (else the test's tmp).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fleet_server import create_token, fleet_fixtures
from report_oracle import (
    check_page,
    pointer,
    run_resolvers,
    site_resolver,
)

from edge_client.audit import AuditLog
from edge_client.site import init_site
from edge_client.site_config import SiteConfig
from privacy.dp.accounting import Mechanism
from privacy.ledger import Budget, PrivacyLedger

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
FEDFLEET = str(Path(sys.executable).parent / "fedfleet")
CHROMIUM = Path("/usr/bin/chromium")
needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian's chromium is not installed: apt-get install -y chromium"
)
TASK = "breast-cancer-mlp"
AUDITED_TASK = "credit-scoring"  # has a sensitive attribute (sex) for the fairness audit
FLOWER_RUN = 7  # the Flower run id the run.json records and the sites' audit entries carry


def _fedfleet(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> Any:
    return subprocess.run(
        [FEDFLEET, *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0", **(env or {})},
        cwd=cwd,
        check=False,
    )


REGIONS = ("DE", "FR")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real 2-round run with local DP and secure aggregation, audited for fairness on
    credit-scoring's sensitive attribute (counts summed inside the masked sum) and with
    energy and CO2 accounted on the shipped carbon trace: every section from its source."""
    out = tmp_path_factory.mktemp("report") / "run"
    done = _fedfleet(
        "simulate", "--task", AUDITED_TASK, "--clients", "4", "--clients-per-round", "4",
        "--rounds", "2", "--dp", "local", "--epsilon", "3", "--secagg",
        "--fraction-evaluate", "1", "--sensitive-attribute", "sex",
        "--carbon-trace", "europe-2023", "--regions", "DE=0.5,FR=0.5",
        "--devices", "cpu-x86=0.5,rpi5=0.5", "--out", str(out), "--quiet",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    doc = json.loads((out / "metrics.json").read_text())
    assert set(doc["fairness"]["groups"]) == {"female", "male"}
    assert set(doc["carbon"]["per_region"]) == set(REGIONS)
    return out


def _local_resolvers(run: Path) -> dict[str, Any]:
    return run_resolvers(run, ROOT)


def _screenshot(page: Any, name: str, tmp_path: Path) -> Path:
    folder = Path(os.environ.get("REPORT_SCREENSHOT_DIR", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def _open_in_chromium(report: Path, tmp_path: Path, name: str) -> dict[str, Any]:
    """Load the report in headless Chromium with every request outside the file recorded
    and refused; a screenshot, the chart's points and what went wrong."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            problems: list[str] = []
            elsewhere: list[str] = []
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))

            def only_the_file(route: Any) -> None:
                if route.request.url == report.resolve().as_uri():
                    route.continue_()
                else:
                    elsewhere.append(route.request.url)
                    route.abort()

            page.route("**/*", only_the_file)
            page.goto(report.resolve().as_uri())
            shot = _screenshot(page, name, tmp_path)
            return {
                "points": page.locator("#accuracy-chart circle.point").count(),
                "chart_visible": page.locator("#accuracy-chart").is_visible(),
                "headings": page.locator("h2").all_inner_texts(),
                "problems": problems,
                "elsewhere": elsewhere,
                "screenshot": shot,
                "width": page.evaluate("document.documentElement.scrollWidth"),
            }
        finally:
            browser.close()


@needs_chromium
def test_every_value_of_a_simulation_report_matches_its_source(
    run_dir: Path, tmp_path: Path
) -> None:
    # Execute
    out = tmp_path / "report.html"
    done = _fedfleet("report", str(run_dir), "--out", str(out))
    # Assert: every value against its source, no number without one.
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"report: {out}"
    html = out.read_text()
    page, problems = check_page(html, _local_resolvers(run_dir))
    assert problems == []
    sources = {v.src.split(":")[0] for v in page.values}
    assert sources == {"metrics", "ledger", "software", "run"}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    rounds = len(metrics["rounds"])
    # Each section holds what its source has: 4 sites' budgets, both fairness groups, both
    # regions, each round's accuracy, fairness, energy and secure-aggregation survivors.
    srcs = [v.src for v in page.values]
    for i in range(rounds):
        for key in ("accuracy", "energy_kwh", "co2_g", "secagg_survivors"):
            assert f"metrics:/rounds/{i}/{key}" in srcs
        assert f"metrics:/rounds/{i}/fairness/worst_group_accuracy" in srcs
    assert sum(s.startswith("ledger:") and s.endswith("/spent") for s in srcs) == 4
    for group in ("female", "male"):
        assert f"metrics:/fairness/groups/{group}/accuracy" in srcs
    for region in REGIONS:
        assert f"metrics:/carbon/per_region/{region}/co2_g" in srcs
    assert "metrics:/fairness/equalized_odds_difference" in srcs
    assert page.embedded is not None and page.embedded["run"]["rounds"] == metrics["rounds"]
    assert "not measured" not in html and "No fleet given" in html
    assert re.search(r"<(link|img|script)[^>]+(src|href)=", html) is None  # nothing external
    # In a real browser: it renders, with the chart, and asks for nothing else.
    seen = _open_in_chromium(out, tmp_path, "report-simulation")
    assert seen["problems"] == [] and seen["elsewhere"] == []
    assert seen["chart_visible"] and seen["points"] == rounds
    assert "Fairness across groups" in seen["headings"] and seen["width"] <= 1200
    assert seen["screenshot"].stat().st_size > 10_000


@needs_chromium
def test_the_pdf_is_printed_by_chromium(run_dir: Path, tmp_path: Path) -> None:
    # Execute: by extension, and by --pdf.
    by_name = _fedfleet("report", str(run_dir), "--out", str(tmp_path / "r.pdf"))
    by_flag = _fedfleet("report", str(run_dir), "--out", str(tmp_path / "r2"), "--pdf")
    # Assert
    assert by_name.returncode == 0, by_name.stderr
    assert by_flag.returncode == 0, by_flag.stderr
    for path in (tmp_path / "r.pdf", tmp_path / "r2"):
        data = path.read_bytes()
        assert data.startswith(b"%PDF") and data.rstrip().endswith(b"%%EOF")
        assert len(re.findall(rb"/Type\s*/Page[^s]", data)) >= 2  # the report spans pages
    assert list(tmp_path.glob("*.html")) == []


def test_sections_without_their_source_say_not_measured(run_dir: Path, tmp_path: Path) -> None:
    # Prepare: the run folder without fairness and carbon, and without its ledger.
    bare = tmp_path / "bare"
    bare.mkdir()
    doc = json.loads((run_dir / "metrics.json").read_text())
    doc.pop("fairness")
    doc.pop("carbon")
    for row in doc["rounds"]:
        for key in ("fairness", "energy_kwh", "co2_g"):
            row.pop(key)
    (bare / "metrics.json").write_text(json.dumps(doc))
    # Execute
    done = _fedfleet("report", str(bare))
    # Assert
    assert done.returncode == 0, done.stderr
    html = (bare / "report.html").read_text()
    assert "Fairness: not measured" in html and "Energy and CO₂: not measured" in html
    assert "No fleet given" in html and "No site audit log given" in html
    assert "No privacy ledger" in html
    page, problems = check_page(html, _local_resolvers(bare))
    assert problems == [] and not any(v.src.startswith("metrics:/carbon") for v in page.values)


# --- bad input ------------------------------------------------------------------------


def _refused(done: Any, code: int) -> str:
    assert done.returncode == code, (done.returncode, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return str(lines[0])


def test_bad_input_is_one_line_and_writes_nothing(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    missing = _fedfleet("report", str(tmp_path / "nope"), "--out", str(out))
    assert "does not exist" in _refused(missing, 2)
    empty = tmp_path / "empty"
    empty.mkdir()
    no_metrics = _fedfleet("report", str(empty), "--out", str(out))
    assert "has no metrics.json" in _refused(no_metrics, 2)
    (empty / "metrics.json").write_text("{not json")
    broken = _fedfleet("report", str(empty), "--out", str(out))
    assert "is not readable JSON" in _refused(broken, 2)
    no_site = _fedfleet("report", str(run_dir), "--out", str(out), "--site", str(tmp_path / "x"))
    assert "no such site.toml" in _refused(no_site, 2)
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    unreachable = _fedfleet(
        "report", str(run_dir), "--out", str(out), "--fleet-run", "1",
        "--fleet-url", f"http://127.0.0.1:{port}", env={"FEDFLEET_TOKEN": "ffk_x"},
    )  # fmt: skip
    assert "cannot reach the fleet" in _refused(unreachable, 1)
    no_token = _fedfleet(
        "report", str(run_dir), "--out", str(out), "--fleet-run", "1",
        env={"FEDFLEET_TOKEN": ""},
    )  # fmt: skip
    assert "FEDFLEET_TOKEN is not set" in _refused(no_token, 2)
    assert not out.exists() and list(tmp_path.glob("*.part")) == []
    out.write_text("keep me")
    exists = _fedfleet("report", str(run_dir), "--out", str(out))
    assert "exists; pass --force" in _refused(exists, 2) and out.read_text() == "keep me"


# --- lineage through a real fleet, and real sites' audit logs and ledgers ---------------


def _site(folder: Path, name: str, *, rounds: list[int], tamper: bool) -> Path:
    """A site with an audit log of this run's train replies and a ledger of its trainings."""
    files = init_site(name=name, out_dir=folder)
    (folder / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    text = files.config.read_text()
    files.config.write_text(text.replace('# age = "int"\n', 'age = "int"\n'))
    config = SiteConfig.load(files.config)
    log = AuditLog.for_site(config)
    ledger = PrivacyLedger.in_state_dir(config.state_dir, site=name)
    for number in rounds:
        log.append(
            {"site": name, "run": FLOWER_RUN, "round": number, "type": "train",
             "kind": "reply", "size": 100, "sha256": "0" * 64, "epsilon": None}
        )  # fmt: skip
        decision = ledger.check_and_reserve(
            task=TASK,
            run_id=str(FLOWER_RUN),
            server_round=number,
            mechanism=Mechanism(0.1, 1.2, 30),
            budget=Budget(config.policy.epsilon, config.policy.delta),
        )
        ledger.commit(decision.entry_id)
    log.append({"site": name, "run": 99, "round": 9, "type": "train", "kind": "reply"})
    if tamper:
        lines = log.path.read_text().splitlines()
        lines[0] = lines[0].replace('"size":100', '"size":101')
        log.path.write_text("\n".join(lines) + "\n")
    return files.config


@needs_chromium
def test_lineage_sites_and_audit_through_the_real_fleet_and_sites(
    run_dir: Path, tmp_path: Path
) -> None:
    # Prepare: the run as a coordinator run folder (run.json names its Flower run).
    run = tmp_path / "run"
    run.mkdir()
    for name in ("metrics.json", "model.pt", "privacy_ledger.sqlite"):
        (run / name).write_bytes((run_dir / name).read_bytes())
    (run / "run.json").write_text(
        json.dumps({"run-id": "run-x", "run-config": {}, "created": "", "flower-runs": ["7"]})
    )
    sites = [
        _site(tmp_path / "st-marys", "st-marys", rounds=[1, 2], tamper=False),
        _site(tmp_path / "city-bank", "city-bank", rounds=[2], tamper=True),
    ]
    with fleet_fixtures().running_server(tmp_path / "fleet-data") as server:
        admin = create_token(server, "admin", cwd=tmp_path)
        viewer = create_token(server, "viewer", cwd=tmp_path)
        env = {"FEDFLEET_URL": server.base_url, "FEDFLEET_TOKEN": admin}
        registered = _fedfleet("model", "register", str(run), env=env)
        assert registered.returncode == 0, registered.stderr
        version = int(registered.stdout.strip())
        fleet_run = int(re.search(r"fleet run (\d+)", registered.stderr).group(1))  # type: ignore[union-attr]
        keys = _fedfleet("keys", "generate", "--out", str(tmp_path / "signing"), cwd=tmp_path)
        assert keys.returncode == 0, keys.stderr
        built = _fedfleet(
            "image", "build", "--target", "cpu-x86", "--model", str(version),
            "--key", str(tmp_path / "signing.key"), "--out", str(tmp_path / "b.ffb"), "--upload",
            env=env, cwd=tmp_path,
        )  # fmt: skip
        assert built.returncode == 0, built.stderr
        api = httpx.Client(
            base_url=f"{server.base_url}/api/v1",
            headers={"Authorization": f"Bearer {admin}"},
            timeout=10,
        )
        api.post("/groups", json={"name": "wards"}).raise_for_status()
        ids = []
        for name in ("pi-1", "pi-2", "pi-3"):
            body = {"name": name, "hardware_target": "cpu-x86", "group": "wards"}
            ids.append(api.post("/devices", json=body).json()["device"]["id"])
        for device in ids[:2]:
            api.post(f"/devices/{device}/heartbeat", json={"model_version_id": version})
        rollout = api.post(
            "/rollouts",
            json={"model_version_id": version, "group": "wards", "waves": [50, 100],
                  "max_failure_rate": 0.1, "ack_timeout_s": 60},
        )  # fmt: skip
        assert rollout.status_code == 201, rollout.text
        # Execute: a viewer token is enough.
        out = tmp_path / "report.html"
        done = _fedfleet(
            "report", str(run), "--out", str(out), "--fleet-run", str(fleet_run),
            "--site", str(sites[0]), "--site", str(sites[1]),
            env={"FEDFLEET_URL": server.base_url, "FEDFLEET_TOKEN": viewer},
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        viewer_api = httpx.Client(
            base_url=f"{server.base_url}/api/v1",
            headers={"Authorization": f"Bearer {viewer}"},
            timeout=10,
        )

        def from_fleet(rest: str) -> Any:
            path, _, where = rest.partition("#")
            return pointer(viewer_api.get(path).raise_for_status().json(), where)

        # The client pages to the end: one item a page gives the same answer.
        from fleet.client import FleetClient, FleetConnection

        paged = FleetClient(FleetConnection(url=server.base_url, token=viewer))
        with paged:
            assert [d.name for d in paged.devices_running(version, page_size=1)] == [
                "pi-1",
                "pi-2",
            ]
            assert [r.model_version_id for r in paged.rollouts_of_model(version, page_size=1)] == [
                version
            ]
        resolvers = _local_resolvers(run)
        resolvers["fleet"] = from_fleet
        resolvers["site"] = site_resolver(sites, flower_runs=[FLOWER_RUN])
        html = out.read_text()
        page, problems = check_page(html, resolvers)
        api.close()
        viewer_api.close()
    # Assert: every value matches its source, and the lineage is complete.
    assert problems == []
    values = {v.src: v.value for v in page.values}
    assert values[f"fleet:/runs/{fleet_run}#/final_model_version_id"] == version
    assert values[f"fleet:/models/{version}#/artifacts/1/format"] == "bundle"
    running = f"fleet:/devices?model_version={version}&limit=500#"
    assert values[running + "count:@/items"] == 2 and values[running + "field:name@/items"] == [
        "pi-1",
        "pi-2",
    ]
    assert any(s.startswith("fleet:/rollouts/") and s.endswith("count:@/devices") for s in values)
    assert "id=\"checkpoint-match\" data-value='true'" in html
    assert values["site:st-marys/verdict/ok"] is True
    assert values["site:city-bank/verdict/ok"] is False and "TAMPERED" in html
    assert "warning: site city-bank's audit log failed verification" in done.stderr
    assert values["site:st-marys/rounds"] == [1, 2] and values["site:city-bank/rounds"] is None
    assert viewer not in html and viewer not in done.stdout + done.stderr
    assert values["site:st-marys/budget/breast-cancer-mlp/completed"] == 2
    seen = _open_in_chromium(out, tmp_path, "report-lineage")
    assert seen["problems"] == [] and seen["elsewhere"] == []


def test_the_cross_check_sees_a_wrong_or_unsourced_number(run_dir: Path) -> None:
    """The oracle can fail: a value changed on the page, a shown text that is not its
    value, and a number cell without a source are each reported."""
    from coordinator.report.build import collect
    from coordinator.report.render import render_html

    # Prepare
    html = render_html(collect(run_dir))
    resolvers = _local_resolvers(run_dir)
    accuracy = json.loads((run_dir / "metrics.json").read_text())["rounds"][0]["accuracy"]
    marker = f"data-src=\"metrics:/rounds/0/accuracy\" data-value='{json.dumps(accuracy)}'>"
    assert marker in html
    # Execute
    _, clean = check_page(html, resolvers)
    _, changed = check_page(
        html.replace(marker, marker.replace(json.dumps(accuracy), "0.5")), resolvers
    )
    _, shown = check_page(html.replace(marker + f"{accuracy:.4f}", marker + "0.1234"), resolvers)
    _, unsourced = check_page(
        html.replace("</tbody>", "<tr><td>42</td></tr></tbody>", 1), resolvers
    )
    # Assert
    assert clean == []
    assert any("metrics:/rounds/0/accuracy: report 0.5" in p for p in changed)
    assert any("shows '0.1234'" in p for p in shown)
    assert unsourced == ["a number without a source: '42'"]
