"""Set-ups that cannot work are refused before round 1, with the fix in the message."""

from __future__ import annotations

import pytest

from strategies import StrategyParams, available_strategies, needs_individual_updates
from strategies.validation import check_run_config, check_strategy_setup

ROBUST = ["fedmedian", "trimmed-mean", "krum", "multikrum", "bulyan"]
SUM_ONLY = ["fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad"]


def test_the_registry_holds_every_aggregator_of_the_issue() -> None:
    assert set(ROBUST + SUM_ONLY + ["fedbuff"]) <= set(available_strategies())
    assert all(needs_individual_updates(n) for n in ROBUST)
    assert not any(needs_individual_updates(n) for n in [*SUM_ONLY, "fedbuff"])


@pytest.mark.parametrize("name", ROBUST)
def test_robust_aggregators_are_refused_with_secure_aggregation(name: str) -> None:
    with pytest.raises(
        ValueError, match=r"turn off secure aggregation \(secagg\) or choose one of"
    ):
        check_strategy_setup(
            strategy=name, params=StrategyParams(), clients_per_round=20, secure_aggregation=True
        )


@pytest.mark.parametrize("name", SUM_ONLY)
def test_sum_only_strategies_run_with_secure_aggregation(name: str) -> None:
    check_strategy_setup(
        strategy=name, params=StrategyParams(), clients_per_round=5, secure_aggregation=True
    )


def test_fedbuff_is_refused_with_synchronous_secure_aggregation() -> None:
    with pytest.raises(ValueError, match="synchronous strategy"):
        check_run_config({"strategy": "fedbuff", "secagg": True, "clients-per-round": 10})


@pytest.mark.parametrize(
    ("name", "f", "n", "fix"),
    [
        ("bulyan", 2, 10, "raise clients-per-round to 11 or lower strategy-byzantine to 1"),
        ("bulyan", 1, 6, "raise clients-per-round to 7 or lower strategy-byzantine to 0"),
        ("krum", 3, 8, "raise clients-per-round to 9 or lower strategy-byzantine to 2"),
        ("multikrum", 1, 4, "raise clients-per-round to 5 or lower strategy-byzantine to 0"),
    ],
)
def test_too_few_clients_for_the_byzantine_count(name: str, f: int, n: int, fix: str) -> None:
    with pytest.raises(ValueError, match=fix):
        check_strategy_setup(strategy=name, params=StrategyParams(byzantine=f), clients_per_round=n)
    check_strategy_setup(strategy=name, params=StrategyParams(byzantine=f), clients_per_round=100)


def test_fedbuff_buffer_and_quorum_must_fit_the_clients_in_flight() -> None:
    with pytest.raises(ValueError, match="lower strategy-buffer-size or raise clients-per-round"):
        check_run_config({"strategy": "fedbuff", "strategy-buffer-size": 8, "clients-per-round": 5})
    with pytest.raises(ValueError, match="lower min-clients"):
        check_run_config(
            {
                "strategy": "fedbuff",
                "strategy-buffer-size": 2,
                "min-clients": 3,
                "clients-per-round": 5,
            }
        )


@pytest.mark.parametrize(
    ("run_config", "message"),
    [
        ({"strategy": "fedsgd"}, "unknown strategy 'fedsgd'; choose one of"),
        ({"strategy-server-lrr": 1}, "unknown strategy option 'server-lrr'; valid options"),
        ({"strategy-trim-fraction": 0.5}, r"trim-fraction=0.5 must be in \[0, 0.5\)"),
        ({"strategy-byzantine": 1.5}, "must be a whole number"),
        ({"strategy-byzantine": "two"}, "must be a whole number"),
        ({"strategy-server-lr": -1}, "server-lr=-1.0 must be > 0"),
        ({"strategy-max-update-norm": "inf"}, "max-update-norm"),
        ({"strategy-krum-select": 30, "strategy": "multikrum"}, "lower strategy-krum-select"),
    ],
)
def test_bad_strategy_options_are_refused(run_config: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_run_config({"clients-per-round": 10, **run_config})


def test_strategy_options_round_trip_through_the_run_config() -> None:
    params = StrategyParams.from_run_config(
        {"strategy-server-lr": "0.5", "strategy-byzantine": 2, "strategy-max-update-norm": "none"}
    )
    assert params == StrategyParams(server_lr=0.5, byzantine=2, max_update_norm=None)
    assert StrategyParams.from_run_config(params.as_run_config()) == params
