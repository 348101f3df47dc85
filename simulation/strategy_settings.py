"""``fedfleet simulate`` flags of the strategy side, turned into run-config keys.

``--strategy-options "server-lr=0.5,byzantine=2"`` → ``strategy-server-lr``,
``strategy-byzantine``; ``--attack``/``--attackers`` → ``attack``/``attackers``;
``--speeds`` → ``speeds`` and the simulated clock; ``--selection``,
``--over-select``, ``--deadline`` → ``selection``, ``over-select``, ``deadline-s``.
Validation happens here, before any run folder exists.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from edge_client.protocol import keys as k
from simulation.run_config import RunConfigDict
from strategies.registry import RUN_CONFIG_PREFIX
from strategies.selection import RC_DEADLINE_S, RC_OVER_SELECT, RC_SELECTION, SelectionConfig
from strategies.validation import check_run_config


class StrategyFields(Protocol):
    """The simulate settings this section reads."""

    @property
    def clients_per_round(self) -> int: ...
    @property
    def strategy_options(self) -> str: ...
    @property
    def attack(self) -> str: ...
    @property
    def attackers(self) -> float: ...
    @property
    def speeds(self) -> str: ...
    @property
    def devices(self) -> str: ...
    @property
    def selection(self) -> str: ...
    @property
    def over_select(self) -> float: ...
    @property
    def deadline(self) -> float: ...


def parse_strategy_options(text: str) -> RunConfigDict:
    """``"a=1,b-c=x"`` → ``{"strategy-a": "1", "strategy-b-c": "x"}``."""
    options: RunConfigDict = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(
                f"--strategy-options item {item!r} is not NAME=VALUE, e.g. server-lr=0.5"
            )
        options[RUN_CONFIG_PREFIX + name.strip()] = value.strip()
    return options


def strategy_run_config(settings: StrategyFields) -> RunConfigDict:
    """The run-config keys these settings add for strategies, selection and attacks."""
    from simulation.attacks import AttackSpec
    from simulation.speeds import SpeedSpec

    rc = parse_strategy_options(settings.strategy_options)
    if settings.attack:
        rc[k.RC_ATTACK] = str(AttackSpec.parse(settings.attack))
        rc[k.RC_ATTACKERS] = float(settings.attackers)
        # Robust aggregators assume f attackers a round; default to the expected number.
        rc.setdefault(
            RUN_CONFIG_PREFIX + "byzantine", round(settings.attackers * settings.clients_per_round)
        )
    if settings.speeds:
        rc[k.RC_SPEEDS] = str(SpeedSpec.parse(settings.speeds))
        rc[k.RC_CLOCK] = "simulated"
    rc[RC_SELECTION] = settings.selection
    if settings.over_select:
        rc[RC_OVER_SELECT] = float(settings.over_select)
    if settings.deadline:
        rc[RC_DEADLINE_S] = float(settings.deadline)
    return rc


def validate_strategy_settings(settings: StrategyFields, *, core: Mapping[str, Any]) -> None:
    """Refuse strategy-side settings that cannot work, naming the flag to change.

    ``core`` is the coordinator's run config (``RunConfig.as_run_config()``)."""
    from simulation.attacks import validate_attackers

    validate_attackers(settings.attackers)
    if settings.attackers > 0 and not settings.attack:
        raise ValueError("--attackers is set but --attack is not; add e.g. --attack sign-flip")
    if settings.attack and settings.attackers == 0:
        raise ValueError("--attack is set but --attackers is 0; add e.g. --attackers 0.2")
    if settings.deadline and not (settings.speeds or settings.devices):
        raise ValueError(
            "--deadline is in simulated seconds and needs simulated device speeds; "
            "add --devices rpi5=0.5,cpu-x86=0.5 or --speeds pareto:1.5 (or drop --deadline)"
        )
    rc = {**core, **strategy_run_config(settings)}
    SelectionConfig.from_run_config(rc)
    check_run_config(rc)
