"""``fedfleet report`` of a real deployment run: a TLS SuperLink, three authenticated sites
as separate processes, secure aggregation and DP-SGD at every site. The report names
each site with the rounds its own audit log shows, ε from its own ledger against its
own budget, and its log's verdict — every value checked against the site's files.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from report_oracle import check_page, run_resolvers, site_resolver
from silo_testkit import TASK, SiloFederation

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

RUN = {
    "task": TASK,
    "sites": 3,
    "min-sites": 2,
    "num-server-rounds": 2,
    "learning-rate": 0.05,
    "batch-size": 16,
    "seed": 7,
    "secagg": True,
    "dp": "local",
    "dp-epsilon": 4.0,
}


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SiloFederation]:
    federation = SiloFederation(tmp_path_factory.mktemp("silo-report"))
    try:
        yield federation.start()
    finally:
        federation.stop()


def test_a_deployment_run_report_names_each_site_from_its_own_files(
    fed: SiloFederation, tmp_path: Path
) -> None:
    # Prepare: a finished 2-round run.
    state = fed.wait_finished(fed.submit(RUN), timeout=600)
    sites = [site.config for site in fed.sites]
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
        assert values[f"site:{site.name}/verdict/ok"] is True
        assert values[f"site:{site.name}/rounds"] == [1, 2]
        assert values[f"site:{site.name}/budget/{TASK}/completed"] == 2
        assert 0 < values[f"site:{site.name}/budget/{TASK}/spent"] <= 8.0
    assert values["metrics:/config/secagg"] is True and values["metrics:/config/dp"] == "local"
    assert values["run:app_sha256"] is not None  # the app the run submitted is pinned
