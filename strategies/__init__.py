"""How updates combine and who trains: one registry of strategies.

Importing the package registers the built-in strategies (``strategies/catalog.py``).
"""

from strategies import catalog as _catalog  # noqa: F401  (registers the strategies)
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
