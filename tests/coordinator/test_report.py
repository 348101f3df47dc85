"""The report page from a hand-written run folder (no simulation): each value is sourced,
a section whose source is absent says so, hostile text is escaped, the write is atomic.

The end-to-end checks (a real run, real sites, a real fleet, Chromium) are in
``tests/e2e/test_report.py``; its oracle is reused here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parents[1] / "e2e"))

from report_oracle import check_page, pointer

from coordinator.report.build import collect, output_format, write_report
from coordinator.report.evidence import ReportInputError, read_run
from coordinator.report.render import render_html


def _run(folder: Path, rounds: list[dict[str, Any]], **sections: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    doc = {
        "config": {"task": "synthetic-logreg", "strategy": "fedavg", "secagg": False},
        "rounds": rounds,
        "final_accuracy": rounds[-1]["accuracy"] if rounds else None,
        **sections,
    }
    (folder / "metrics.json").write_text(json.dumps(doc))
    return folder


def _metrics_only(folder: Path) -> dict[str, Any]:
    """metrics.json on its own; the software rows are checked in tests/e2e/test_report.py."""
    metrics = json.loads((folder / "metrics.json").read_text())
    return {
        "metrics": lambda rest: pointer(metrics, rest),
        "software": lambda rest: _SHOWN,  # compared with itself here
        "run": lambda rest: None,  # no model.pt, no app here
    }


class _Shown:
    def __eq__(self, other: object) -> bool:
        return True


_SHOWN = _Shown()


rounds_strategy = st.lists(
    st.fixed_dictionaries(
        {
            "accuracy": st.floats(0, 1),
            "loss": st.floats(0, 50),
            "clients": st.integers(0, 10_000),
            "selected": st.integers(0, 10_000),
            "duration_s": st.floats(0, 1e5),
        },
        optional={"epsilon": st.floats(0, 100), "co2_g": st.floats(0, 1e6)},
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=25, deadline=None)
@given(rounds=rounds_strategy)
def test_every_round_value_is_shown_with_its_source(tmp_path_factory: Any, rounds: list) -> None:
    # Prepare
    numbered = [{"round": i + 1, **r} for i, r in enumerate(rounds)]
    folder = _run(tmp_path_factory.mktemp("run"), numbered)
    # Execute
    html = render_html(collect(folder))
    # Assert
    page, problems = check_page(html, _metrics_only(folder))
    assert problems == []
    shown = {v.src for v in page.values}
    for i, row in enumerate(numbered):
        assert {f"metrics:/rounds/{i}/{k}" for k in row} <= shown


def test_absent_sections_say_not_measured_and_text_is_escaped(tmp_path: Path) -> None:
    # Prepare: a group name and a trace name that are markup.
    hostile = "<script>alert(1)</script>"
    fairness = {
        "group_by": "site",
        "groups": {hostile: {"n": 3, "accuracy": 0.5}},
        "worst_group_accuracy": 0.5,
        "worst_decile_accuracy": 0.5,
        "accuracy_std": 0.0,
        "max_gap": 0.0,
    }
    folder = _run(tmp_path / "a", [{"round": 1, "accuracy": 0.5}], fairness=fairness)
    bare = _run(tmp_path / "b", [{"round": 1, "accuracy": 0.5}])
    # Execute
    with_fairness = render_html(collect(folder))
    without = render_html(collect(bare))
    # Assert
    assert "<script>alert" not in with_fairness and "&lt;script&gt;alert(1)" in with_fairness
    assert "Energy and CO₂: not measured" in with_fairness
    assert "Fairness: not measured" in without and "Energy and CO₂: not measured" in without
    _, problems = check_page(with_fairness, _metrics_only(folder))
    assert problems == []


def test_a_bad_run_folder_is_refused_with_the_fix(tmp_path: Path) -> None:
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "metrics.json").write_text(json.dumps({"config": {}, "rounds": [{}]}))
    with pytest.raises(ReportInputError, match="rounds\\[0\\] has no integer 'round'"):
        read_run(tmp_path / "r")
    (tmp_path / "r" / "metrics.json").write_text("[]")
    with pytest.raises(ReportInputError, match="needs 'config' and 'rounds'"):
        read_run(tmp_path / "r")


def test_the_format_follows_the_name_or_the_flag_and_a_failed_pdf_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from coordinator.report.pdf import PdfError

    assert output_format(Path("r.pdf"), False) == "pdf"
    assert output_format(Path("r.PDF"), False) == "pdf"
    assert output_format(Path("r"), True) == "pdf"
    assert output_format(Path("r.html"), False) == "html"
    folder = _run(tmp_path / "run", [{"round": 1, "accuracy": 0.5}])
    monkeypatch.setenv("FEDFLEET_CHROMIUM", str(tmp_path / "no-such-browser"))
    with pytest.raises(PdfError, match="does not exist"):
        write_report(collect(folder), tmp_path / "r.pdf", fmt="pdf")
    assert list(tmp_path.glob("r.pdf*")) == [] and list(tmp_path.glob(".r.pdf*")) == []


def test_central_dp_shows_the_runs_own_accounting_against_its_target(tmp_path: Path) -> None:
    # Prepare: what `simulate --dp central --epsilon 5` writes (no ledger: no site trained DP).
    rounds = [
        {"round": 1, "accuracy": 0.6, "epsilon": 3.356},
        {"round": 2, "accuracy": 0.7, "epsilon": 4.9817},
    ]
    folder = _run(tmp_path / "run", rounds)
    doc = json.loads((folder / "metrics.json").read_text())
    doc["config"].update({"dp": "central", "dp-epsilon": 5.0})
    (folder / "metrics.json").write_text(json.dumps(doc))
    # Execute
    html = render_html(collect(folder))
    # Assert
    page, problems = check_page(html, _metrics_only(folder))
    assert problems == []
    shown = {v.src: v.value for v in page.values}
    assert shown["metrics:/rounds/1/epsilon"] == 4.9817
    assert shown["metrics:/config/dp-epsilon"] == 5.0
    assert 'id="run-accounting"' in html and "No privacy ledger" in html


def test_a_deployments_measured_carbon_is_shown_per_site_and_round(tmp_path: Path) -> None:
    # Prepare: a deployment's section (coordinator.strategy_setup.SiteEnergy's shape):
    # round 1 plain (per site), round 2 under secure aggregation (the sites' sum only).
    carbon = {
        "energy_kwh": 0.003,
        "co2_g": 1.2,
        "selection": "random",
        "per_site": {
            "st-marys": {"energy_kwh": 0.001, "co2_g": 0.4, "client_rounds": 1},
            "<b>x</b>": {"energy_kwh": 0.0005, "co2_g": 0.2, "client_rounds": 1},
        },
        "masked_rounds": 1,
        "per_round": [
            {"round": 1, "energy_kwh": 0.0015, "co2_g": 0.6, "sites": 2, "per_site": {}},
            {"round": 2, "energy_kwh": 0.0015, "co2_g": 0.6, "sites": 3, "per_site": None},
        ],
        "source": "codecarbon",
    }
    rounds = [{"round": 1, "accuracy": 0.5}, {"round": 2, "accuracy": 0.6}]
    folder = _run(tmp_path, rounds, carbon=carbon)
    # Execute
    html = render_html(collect(folder))
    # Assert: every value sourced and equal to metrics.json; no trace row; masked noted
    page, problems = check_page(html, _metrics_only(folder))
    assert problems == []
    shown = {v.src for v in page.values}
    for name in ("st-marys", "<b>x</b>"):
        for key in ("energy_kwh", "co2_g", "client_rounds"):
            token = name.replace("/", "~1")  # a JSON pointer's escape
            assert f"metrics:/carbon/per_site/{token}/{key}" in shown
    for i in (0, 1):
        for key in ("round", "sites", "energy_kwh", "co2_g"):
            assert f"metrics:/carbon/per_round/{i}/{key}" in shown
    assert {"metrics:/carbon/source", "metrics:/carbon/masked_rounds"} <= shown
    assert "metrics:/carbon/trace" not in shown and "<b>x</b>" not in html
    assert "masked sum" in html and "per-site values not known" in html
