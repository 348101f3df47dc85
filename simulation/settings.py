"""``fedfleet simulate`` settings: defaults < ``--config FILE.toml`` < command-line flags."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import tomllib

from coordinator.config import RunConfig

Engine = Literal["inprocess", "flower"]
ENGINES: tuple[Engine, ...] = ("inprocess", "flower")


@dataclass(frozen=True)
class SimulateSettings:
    """Everything one simulation needs; keys of the TOML file are the flag names."""

    task: str = "digits-cnn"
    strategy: str = "fedavg"
    clients: int = 10
    clients_per_round: int = 10
    rounds: int = 3
    local_epochs: int = 1
    batch_size: int = 16
    lr: float = 0.05
    partition: str = "iid"
    seed: int = 0
    engine: str = "inprocess"
    fraction_evaluate: float = 0.0
    # strategies, selection, attacks (issue 10): see feature_run_config
    strategy_options: str = ""
    attack: str = ""
    attackers: float = 0.0
    speeds: str = ""
    selection: str = "random"
    over_select: float = 0.0
    deadline: float = 0.0
    # secure aggregation and dropouts (issue 3): see simulation/secagg_settings.py
    secagg: bool = False
    secagg_degree: int = 0
    secagg_threshold: int = 0
    secagg_clip: float = 1.0
    secagg_bits: int = 16
    dropout: float = 0.0
    dropout_stage: str = "after-key-share"
    # simulated fleet and third-party apps (issue 8): see simulation/fleet_settings.py
    devices: str = ""
    app: str = ""
    app_config: str = ""
    threads: int = 1  # torch intra-op threads of the in-process engine; 0 = torch's default
    # differential privacy (issue 4): see simulation/dp_settings.py
    dp: str = "none"
    epsilon: float | None = None
    delta: float = 1e-5
    clip: float = 1.0
    noise_multiplier: float | None = None
    dp_clipping: str = "fixed"
    dp_accountant: str = "rdp"
    dp_min_clients: int = 0
    sweep_epsilon: str = ""

    @classmethod
    def build(cls, *, config_file: Path | None, overrides: Mapping[str, Any]) -> SimulateSettings:
        """Merge the TOML file (if any) and the flags given; validate the result."""
        values: dict[str, Any] = {}
        if config_file is not None:
            values.update(load_toml(config_file))
        values.update({k: v for k, v in overrides.items() if v is not None})
        known = {f.name: f for f in fields(cls)}
        for key in values:
            if key not in known:
                raise ValueError(
                    f"unknown setting {key.replace('_', '-')!r}; valid keys: "
                    + ", ".join(sorted(n.replace("_", "-") for n in known))
                )
        try:
            settings = cls(**values)
        except TypeError as exc:
            raise ValueError(str(exc)) from None
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"unknown engine {self.engine!r}; choose inprocess or flower")
        from strategies import available_strategies

        if self.strategy not in available_strategies():
            raise ValueError(
                f"unknown strategy {self.strategy!r}; choose one of: "
                + ", ".join(available_strategies())
            )
        self.run_config()  # the coordinator's own validation
        from simulation.strategy_settings import validate_strategy_settings

        validate_strategy_settings(self)
        from simulation.secagg_settings import validate_secagg_settings

        validate_secagg_settings(self)
        from simulation.fleet_settings import validate_fleet_settings

        validate_fleet_settings(self)
        from simulation.dp_settings import validate_dp_settings

        validate_dp_settings(self)

    def run_config(self, *, out_dir: str = "") -> RunConfig:
        """The coordinator's RunConfig for these settings (validated)."""
        config = RunConfig(
            task=self.task,
            strategy=self.strategy,
            num_server_rounds=self.rounds,
            num_clients=self.clients,
            clients_per_round=self.clients_per_round,
            local_epochs=self.local_epochs,
            batch_size=self.batch_size,
            learning_rate=self.lr,
            partition=self.partition,
            seed=self.seed,
            fraction_evaluate=self.fraction_evaluate,
            out_dir=out_dir,
        )
        config.validate()
        return config

    def feature_run_config(self) -> dict[str, bool | int | float | str]:
        """Run-config keys of the feature switches (beyond the coordinator's core keys)."""
        from simulation.dp_settings import dp_run_config
        from simulation.fleet_settings import fleet_run_config
        from simulation.secagg_settings import secagg_run_config
        from simulation.strategy_settings import strategy_run_config

        return {
            **strategy_run_config(self),
            **secagg_run_config(self),
            **fleet_run_config(self),
            **dp_run_config(self),
        }


def load_toml(path: Path) -> dict[str, Any]:
    """Read a settings TOML; kebab-case keys become field names. Clear errors."""
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"config file {path} is not valid TOML: {exc}") from None
    section = raw.get("simulate", raw)
    if not isinstance(section, dict):
        raise ValueError(f"config file {path}: [simulate] must be a table")
    return {k.replace("-", "_"): v for k, v in section.items()}
