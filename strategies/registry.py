"""One registry of aggregation strategies, looked up by name.

Flower's Message-API strategies are registered and configured here rather than
rewritten (see ``strategies/catalog.py``). The coordinator's round loop hands every
strategy a grid view that holds exactly the clients it selected, so strategies sample
"all" of that view: selection lives in the loop, combination in the strategy.

Strategy knobs travel as ``strategy-*`` keys of the Flower run config
(``strategy-server-lr = 0.5``); :meth:`StrategyParams.from_run_config` reads and
validates them once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, get_args, get_type_hints

if TYPE_CHECKING:
    from flwr.serverapp.strategy import Strategy

from tasks.run_config import as_number

RUN_CONFIG_PREFIX = "strategy-"


@dataclass(frozen=True)
class StrategyParams:
    """Knobs the strategies understand; each strategy reads the ones it needs.

    ``server_lr`` is the server step size: ``None`` keeps each strategy's own default
    (1.0 for fedavgm and fedbuff, 0.1 for fedadam/fedadagrad, 0.01 for fedyogi).
    ``byzantine`` is *f*, the number of a round's updates assumed malicious (Krum,
    Multi-Krum, Bulyan). ``max_update_norm`` bounds the L2 norm of an update
    (reply weights minus the weights the client started from); ``None`` means no
    bound (non-finite updates are rejected regardless). ``q`` is q-FFL's fairness
    exponent (0 = FedAvg's objective; larger weighs clients with higher loss more),
    ``client_lr`` the clients' learning rate q-FFL estimates its Lipschitz constant
    from (L = 1 / client_lr; ``None``: the coordinator fills in the run's).
    """

    proximal_mu: float = 0.01
    server_lr: float | None = None
    server_momentum: float = 0.9
    beta_1: float = 0.9
    beta_2: float = 0.99
    tau: float = 1e-3
    trim_fraction: float = 0.2
    byzantine: int = 0
    krum_select: int | None = None
    buffer_size: int = 5
    staleness_exponent: float = 0.5
    max_staleness: int = 20
    max_update_norm: float | None = None
    q: float = 1.0
    client_lr: float | None = None

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> StrategyParams:
        """Read ``strategy-<knob>`` keys (kebab-case); unknown ``strategy-*`` keys are
        refused with the list of valid ones."""
        known = {f.name.replace("_", "-"): f for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, raw in run_config.items():
            if not key.startswith(RUN_CONFIG_PREFIX):
                continue
            name = key[len(RUN_CONFIG_PREFIX) :]
            if name not in known:
                raise ValueError(
                    f"unknown strategy option {name!r}; valid options: {', '.join(sorted(known))}"
                )
            values[known[name].name] = _coerce(key, raw, field_name=known[name].name)
        params = cls(**values)
        params.validate()
        return params

    def validate(self) -> None:
        """Refuse values no strategy can use, naming the option to change."""
        checks: list[tuple[str, bool, str]] = [
            ("proximal-mu", self.proximal_mu >= 0, ">= 0"),
            ("server-lr", self.server_lr is None or self.server_lr > 0, "> 0"),
            ("server-momentum", 0 <= self.server_momentum < 1, "in [0, 1)"),
            ("beta-1", 0 <= self.beta_1 < 1, "in [0, 1)"),
            ("beta-2", 0 <= self.beta_2 < 1, "in [0, 1)"),
            ("tau", self.tau > 0, "> 0"),
            ("trim-fraction", 0 <= self.trim_fraction < 0.5, "in [0, 0.5)"),
            ("byzantine", self.byzantine >= 0, ">= 0"),
            ("krum-select", self.krum_select is None or self.krum_select >= 1, ">= 1"),
            ("buffer-size", self.buffer_size >= 1, ">= 1"),
            ("staleness-exponent", self.staleness_exponent >= 0, ">= 0"),
            ("max-staleness", self.max_staleness >= 0, ">= 0"),
            ("max-update-norm", self.max_update_norm is None or self.max_update_norm > 0, "> 0"),
            ("q", self.q >= 0, ">= 0"),
            ("client-lr", self.client_lr is None or self.client_lr > 0, "> 0"),
        ]
        for name, ok, expected in checks:
            value = getattr(self, name.replace("-", "_"))
            if not ok or (isinstance(value, float) and not math.isfinite(value)):
                raise ValueError(
                    f"strategy option {name}={value!r} must be {expected}; "
                    f"change {RUN_CONFIG_PREFIX}{name}"
                )

    def as_run_config(self) -> dict[str, bool | int | float | str]:
        """The ``strategy-*`` run-config keys of the non-default values."""
        default = StrategyParams()
        return {
            RUN_CONFIG_PREFIX + f.name.replace("_", "-"): getattr(self, f.name)
            for f in fields(self)
            if getattr(self, f.name) != getattr(default, f.name)
            and getattr(self, f.name) is not None
        }


def _coerce(key: str, raw: Any, *, field_name: str) -> Any:
    """Convert a run-config value to the knob's type; ``""``/``"none"`` clear an
    optional knob."""
    hint = get_type_hints(StrategyParams)[field_name]
    args = get_args(hint)
    optional = type(None) in args
    target = next(a for a in args if a is not type(None)) if args else hint
    if isinstance(raw, str) and raw.strip().lower() in ("", "none"):
        if optional:
            return None
        raise ValueError(f"run config {key} needs a value")
    return as_number(key, raw, target)


StrategyFactory = Callable[[StrategyParams], "Strategy"]


def _at_least_one(params: StrategyParams) -> int:
    return 1


@dataclass(frozen=True)
class StrategyInfo:
    """A registered strategy: its factory and what it needs from the round.

    ``needs_individual_updates`` is true for aggregators that must see each client's
    update on its own (median, trimmed mean, Krum, Bulyan): they cannot run on the
    masked sum that secure aggregation reveals. ``asynchronous`` strategies aggregate
    buffers of updates that arrive at different times (FedBuff): the loop runs them
    with a buffered exchange. ``min_updates(params)`` is the fewest updates one
    aggregation needs (Bulyan: 4f+3).
    """

    name: str
    factory: StrategyFactory
    needs_individual_updates: bool = False
    asynchronous: bool = False
    min_updates: Callable[[StrategyParams], int] = _at_least_one
    summary: str = ""


_STRATEGIES: dict[str, StrategyInfo] = {}


def _first_line(doc: str | None) -> str:
    lines = (doc or "").strip().splitlines()
    return lines[0] if lines else ""


def register_strategy(
    name: str,
    *,
    needs_individual_updates: bool = False,
    asynchronous: bool = False,
    min_updates: Callable[[StrategyParams], int] = _at_least_one,
    summary: str = "",
) -> Callable[[StrategyFactory], StrategyFactory]:
    """Decorator: register a strategy factory under ``name``; duplicates are refused.

    Set ``needs_individual_updates`` for aggregators that must see every client's
    update separately (secure aggregation refuses them).
    """

    def decorator(factory: StrategyFactory) -> StrategyFactory:
        if name in _STRATEGIES:
            raise ValueError(f"strategy {name!r} is already registered")
        _STRATEGIES[name] = StrategyInfo(
            name=name,
            factory=factory,
            needs_individual_updates=needs_individual_updates,
            asynchronous=asynchronous,
            min_updates=min_updates,
            summary=summary or _first_line(factory.__doc__),
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
    params = params or StrategyParams()
    params.validate()
    return strategy_info(name).factory(params)
