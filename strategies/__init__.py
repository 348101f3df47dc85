"""How updates combine and who trains: one registry of strategies."""

from strategies.registry import (
    StrategyInfo,
    StrategyParams,
    available_strategies,
    build_strategy,
    needs_individual_updates,
    register_strategy,
    strategy_info,
)

__all__ = [
    "StrategyInfo",
    "StrategyParams",
    "available_strategies",
    "build_strategy",
    "needs_individual_updates",
    "register_strategy",
    "strategy_info",
]
