"""A site's grid region registered with ``coordinator add-site --region`` reaches a
deployment's carbon-aware selection; a run's ``node-regions`` overrides it node by node."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coordinator.run_state import RunState
from coordinator.strategy_setup import site_names, site_regions
from coordinator.superlink import CoordinatorSettings, register_site
from strategies.deployment_telemetry import deployment_telemetry

TRACE = "timestamp,region,gco2_per_kwh\n" + "".join(
    f"2024-01-01T{h:02d}:00:00Z,{r},{v}\n" for h in range(2) for r, v in (("DE", 400), ("FR", 50))
)


def test_registered_regions_feed_selection_and_node_regions_override_them(
    tmp_path: Path,
) -> None:
    # Prepare: sites.json as add-site writes it (one site without a region) and a trace
    state = tmp_path / "state"
    run = RunState.create(state, {"task": "breast-cancer-mlp"})
    (state / "sites.json").write_text(
        json.dumps(
            {
                "st-marys": {"node-id": 1, "public-key": "k", "region": "DE"},
                "lyon": {"node-id": 2, "public-key": "k", "region": "DE"},
                "old": {"node-id": 3, "public-key": "k"},
            }
        )
    )
    trace = tmp_path / "grid.csv"
    trace.write_text(TRACE)
    config = {**run.run_config, "carbon-trace": str(trace), "node-regions": "2=FR"}
    # Execute
    registered = site_regions(config)
    source = deployment_telemetry(config, registered=registered)
    # Assert: the registered region where the run declares none; the run's wins
    assert registered == {1: "DE", 2: "DE"}
    assert site_names(config) == {1: "st-marys", 2: "lyon", 3: "old"}
    assert source is not None
    assert source(1) is not None and source(1).region == "DE"  # type: ignore[union-attr]
    assert source(2) is not None and source(2).region == "FR"  # type: ignore[union-attr]
    assert source(2).carbon_intensity == 50.0  # type: ignore[union-attr]
    assert source(3) is None  # nothing known about it


def test_a_registered_region_the_trace_lacks_stops_the_run_in_one_line(tmp_path: Path) -> None:
    trace = tmp_path / "grid.csv"
    trace.write_text(TRACE)
    with pytest.raises(ValueError, match=r"no region 'PL'.*node 4's site declares it"):
        deployment_telemetry({"carbon-trace": str(trace)}, registered={4: "PL"})


def test_add_site_refuses_a_region_that_is_not_a_name_before_registering(
    tmp_path: Path,
) -> None:
    # Prepare: a coordinator whose SuperLink is not running (nothing may be contacted)
    config = tmp_path / "coordinator.toml"
    config.write_text(f'[state]\ndir = "{tmp_path / "state"}"\n')
    settings = CoordinatorSettings.load(config)
    key = tmp_path / "site.pub"
    key.write_text("ecdsa-sha2-nistp384 AAAA site\n")
    # Execute / Assert: one line naming the rule; no sites.json written
    with pytest.raises(ValueError, match=r"region 'D E' is not a region name: 1-32 letters"):
        register_site(settings, name="s", public_key=key, region="D E")
    assert not (tmp_path / "state" / "sites.json").exists()
