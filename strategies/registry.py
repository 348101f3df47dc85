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


@dataclass(frozen=True)
class StrategyInfo:
    """A registered strategy: its factory and what it needs from the round.

    ``needs_individual_updates`` is true for aggregators that must see each client's
    update on its own (median, trimmed mean, Krum, Bulyan): they cannot run on the
    masked sum that secure aggregation reveals.
    """

    name: str
    factory: StrategyFactory
    needs_individual_updates: bool = False


_STRATEGIES: dict[str, StrategyInfo] = {}


def register_strategy(
    name: str, *, needs_individual_updates: bool = False
) -> Callable[[StrategyFactory], StrategyFactory]:
    """Decorator: register a strategy factory under ``name``; duplicates are refused.

    Set ``needs_individual_updates`` for aggregators that must see every client's
    update separately (secure aggregation refuses them).
    """

    def decorator(factory: StrategyFactory) -> StrategyFactory:
        if name in _STRATEGIES:
            raise ValueError(f"strategy {name!r} is already registered")
        _STRATEGIES[name] = StrategyInfo(
            name=name, factory=factory, needs_individual_updates=needs_individual_updates
        )
        return factory

    return decorator


def available_strategies() -> list[str]:
    """Registered strategy names, sorted."""
    return sorted(_STRATEGIES)


def strategy_info(name: str) -> StrategyInfo:
    """The registry entry of ``name``; the error lists the valid names."""
    try:
        return _STRATEGIES[name]
    except KeyError:
        raise ValueError(
            f"unknown strategy {name!r}; choose one of: {', '.join(available_strategies())}"
        ) from None


def needs_individual_updates(name: str) -> bool:
    """Whether strategy ``name`` must see each client's update (not only their sum)."""
    return strategy_info(name).needs_individual_updates


def build_strategy(name: str, params: StrategyParams | None = None) -> Strategy:
    """Instantiate the strategy ``name``; the error lists the valid names."""
    return strategy_info(name).factory(params or StrategyParams())


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
