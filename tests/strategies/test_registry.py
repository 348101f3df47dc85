"""The strategy registry: lookup, duplicates refused, the individual-updates flag."""

from __future__ import annotations

import pytest

from strategies import (
    StrategyParams,
    available_strategies,
    build_strategy,
    needs_individual_updates,
    register_strategy,
    strategy_info,
)


def test_unknown_strategy_lists_valid_names() -> None:
    with pytest.raises(ValueError, match=r"choose one of: .*fedavg"):
        build_strategy("fedsgd-typo", StrategyParams())


def test_duplicate_registration_is_refused() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_strategy("fedavg")(lambda params: build_strategy("fedavg", params))


def test_fedavg_needs_only_the_sum() -> None:
    assert "fedavg" in available_strategies()
    assert needs_individual_updates("fedavg") is False
    assert strategy_info("fedavg").name == "fedavg"
