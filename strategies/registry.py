"""One registry of aggregation strategies, looked up by name.

Flower's Message-API strategies are registered and configured here rather than
rewritten. The coordinator's round loop hands every strategy a grid view that holds
exactly the clients it selected, so strategies sample "all" of that view: selection
lives in the loop, combination in the strategy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from flwr.serverapp.strategy import FedAvg, FedProx, Strategy


@dataclass(frozen=True)
class StrategyParams:
    """Knobs the strategies understand; each strategy reads the ones it needs."""

    proximal_mu: float = 0.01


StrategyFactory = Callable[[StrategyParams], Strategy]

_STRATEGIES: dict[str, StrategyFactory] = {}


def register_strategy(name: str) -> Callable[[StrategyFactory], StrategyFactory]:
    """Decorator: register a strategy factory under ``name``; duplicates are refused."""

    def decorator(factory: StrategyFactory) -> StrategyFactory:
        if name in _STRATEGIES:
            raise ValueError(f"strategy {name!r} is already registered")
        _STRATEGIES[name] = factory
        return factory

    return decorator


def available_strategies() -> list[str]:
    """Registered strategy names, sorted."""
    return sorted(_STRATEGIES)


def build_strategy(name: str, params: StrategyParams | None = None) -> Strategy:
    """Instantiate the strategy ``name``; the error lists the valid names."""
    try:
        factory = _STRATEGIES[name]
    except KeyError:
        raise ValueError(
            f"unknown strategy {name!r}; choose one of: {', '.join(available_strategies())}"
        ) from None
    return factory(params or StrategyParams())


# Sampling is done by the round loop: the strategy takes every node of the view it gets.
_ALL_OF_VIEW = {
    "fraction_train": 1.0,
    "fraction_evaluate": 1.0,
    "min_train_nodes": 1,
    "min_evaluate_nodes": 1,
    "min_available_nodes": 1,
}


@register_strategy("fedavg")
def _fedavg(params: StrategyParams) -> Strategy:
    return FedAvg(**_ALL_OF_VIEW)  # type: ignore[arg-type]


@register_strategy("fedprox")
def _fedprox(params: StrategyParams) -> Strategy:
    return FedProx(proximal_mu=params.proximal_mu, **_ALL_OF_VIEW)  # type: ignore[arg-type]
