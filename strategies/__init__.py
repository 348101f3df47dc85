"""How updates combine and who trains: one registry of strategies."""

from strategies.registry import StrategyParams, available_strategies, build_strategy

__all__ = ["StrategyParams", "available_strategies", "build_strategy"]
