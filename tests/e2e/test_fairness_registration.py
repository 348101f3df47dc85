"""The fairness audit of a run reaches the fleet, and gates its registration.

Real parts: a real ``fedfleet simulate`` run of credit-scoring with the audit on, a real
``fedfleet fleet serve`` (loopback, SQLite, stopped by PID), ``fedfleet model register``
in a subprocess, the dashboard's run page over HTTP with a real login.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fleet_server import create_token, fleet_fixtures

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _fedfleet(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "fedfleet"), *args],
        cwd=cwd,
        env={**os.environ, "OMP_NUM_THREADS": "1", "FLWR_TELEMETRY_ENABLED": "0", **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fairness-registration")


@pytest.fixture(scope="module")
def server(work: Path) -> Iterator[Any]:
    with fleet_fixtures().running_server(work / "fleet-data") as running:
        yield running


@pytest.fixture(scope="module")
def token(server: Any, work: Path) -> str:
    return str(create_token(server, "operator", cwd=work))


@pytest.fixture(scope="module")
def run_dir(work: Path) -> Path:
    out = work / "runs" / "credit-1"
    done = _fedfleet(
        "simulate", "--task", "credit-scoring", "--clients", "6", "--clients-per-round", "6",
        "--rounds", "2", "--partition", "natural", "--fraction-evaluate", "1",
        "--sensitive-attribute", "sex", "--out", str(out), "--quiet",
        env={}, cwd=work,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return out


def test_a_gap_above_the_gate_is_refused_before_the_fleet_hears_of_it(
    run_dir: Path, server: Any, token: str, work: Path
) -> None:
    gap = json.loads((run_dir / "metrics.json").read_text())["fairness"]["max_gap"]
    env = {"FEDFLEET_URL": server.base_url, "FEDFLEET_TOKEN": token}
    done = _fedfleet(
        "model", "register", str(run_dir), "--max-group-gap", f"{gap / 2:.6f}", env=env, cwd=work
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "not registered" in lines[0] and "by sex" in lines[0]
    assert f"{gap:.4f}" in lines[0]
    runs = httpx.get(
        f"{server.base_url}/api/v1/runs", headers={"Authorization": f"Bearer {token}"}
    ).json()
    assert runs["items"] == []  # nothing was recorded


def test_a_run_within_the_gate_shows_its_fairness_in_the_fleet(
    run_dir: Path, server: Any, token: str, work: Path
) -> None:
    doc = json.loads((run_dir / "metrics.json").read_text())
    env = {"FEDFLEET_URL": server.base_url, "FEDFLEET_TOKEN": token}
    done = _fedfleet("model", "register", str(run_dir), "--max-group-gap", "0.5", env=env, cwd=work)
    assert done.returncode == 0, done.stderr
    headers = {"Authorization": f"Bearer {token}"}
    runs = httpx.get(f"{server.base_url}/api/v1/runs", headers=headers).json()["items"]
    assert len(runs) == 1
    detail = httpx.get(f"{server.base_url}/api/v1/runs/{runs[0]['id']}", headers=headers).json()
    last = detail["rounds"][-1]["metrics"]
    audit = doc["rounds"][-1]["fairness"]
    assert last["fairness_max_gap"] == pytest.approx(audit["max_gap"])
    assert last["fairness_accuracy_female"] == pytest.approx(audit["groups"]["female"]["accuracy"])
    assert last["fairness_demographic_parity_difference"] == pytest.approx(
        audit["demographic_parity_difference"]
    )
    with httpx.Client(base_url=server.base_url, follow_redirects=False) as browser:
        assert browser.post("/login", data={"token": token, "next": "/runs"}).status_code == 303
        page = browser.get(f"/runs/{runs[0]['id']}").text
    assert 'id="fairness"' in page and "Largest gap" in page
    assert f"{audit['max_gap']:.4f}"[:5] in page
