"""``fedfleet simulate`` settings: defaults < ``--config FILE.toml`` < command-line flags.

One flat settings object (the TOML keys and the flags are its field names) whose
sections each own their flags' run-config keys and validation:
``simulation.strategy_settings`` (strategies, selection, attacks),
``simulation.secagg_settings`` (secure aggregation, dropouts),
``simulation.fleet_settings`` (simulated devices, threads),
``simulation.flower_app`` (``--app``) and ``simulation.dp_settings`` (DP). The sections
import nothing from here; this module builds the coordinator's :class:`RunConfig` once
and hands it to them.

Defaults are written once: the core ones are :class:`RunConfig`'s, the secure
aggregation ones :class:`SecAggConfig`'s, the DP ones :class:`DPConfig`'s, the rest
here; ``fedfleet simulate --help`` shows these values (``simulation.cli``) and
``tests/simulation/test_settings_defaults.py`` checks the Flower App config in
``pyproject.toml`` against them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import tomllib

from coordinator.config import RunConfig, toml_type_error
from privacy.dp import DPConfig
from privacy.secagg.config import SecAggConfig
from simulation.dp_settings import dp_run_config, validate_dp_settings
from simulation.dropout import DROPOUT_STAGES
from simulation.fleet_settings import fleet_run_config, validate_fleet_settings
from simulation.flower_app import validate_app_settings
from simulation.ray_settings import validate_ray_settings
from simulation.run_config import RunConfigDict
from simulation.secagg_settings import (
    secagg_run_config,
    validate_secagg_run_config,
    validate_secagg_settings,
)
from simulation.strategy_settings import strategy_run_config, validate_strategy_settings
from strategies.selection import SelectionConfig

Engine = Literal["inprocess", "flower", "ray"]
ENGINES: tuple[Engine, ...] = ("inprocess", "flower", "ray")

_CORE = RunConfig()
_SECAGG = SecAggConfig()
_DP = DPConfig()
_SELECTION = SelectionConfig()

# Settings that configure fedfleet's own apps; a third-party app (--app) reads its own.
FEDFLEET_APP_ONLY = (
    "task",
    "dataset",
    "data_dir",
    "strategy",
    "clients_per_round",
    "rounds",
    "local_epochs",
    "batch_size",
    "lr",
    "momentum",
    "partition",
    "fraction_evaluate",
    "sensitive_attribute",
    "fairness_reweigh",
    "equal_opportunity",
    "strategy_options",
    "attack",
    "attackers",
    "speeds",
    "selection",
    "over_select",
    "carbon_trace",
    "regions",
    "round_hours",
    "deadline",
    "secagg",
    "dropout",
    "dp",
    "epsilon",
    "sweep_epsilon",
)


@dataclass(frozen=True)
class SimulateSettings:
    """Everything one simulation needs; keys of the TOML file are the flag names."""

    task: str = _CORE.task
    strategy: str = _CORE.strategy
    clients: int = _CORE.num_clients
    clients_per_round: int = _CORE.clients_per_round
    rounds: int = _CORE.num_server_rounds
    # local training: None = the task's default (tasks.TrainDefaults, their one home)
    local_epochs: int | None = _CORE.local_epochs
    batch_size: int | None = _CORE.batch_size
    lr: float | None = _CORE.learning_rate
    momentum: float | None = _CORE.momentum
    partition: str = _CORE.partition
    # a Hugging Face dataset instead of --task (tasks/hf_data.py): it becomes the task
    dataset: str = ""
    data_dir: str = ""
    seed: int = _CORE.seed
    engine: str = ENGINES[0]
    fraction_evaluate: float = _CORE.fraction_evaluate
    sensitive_attribute: str = _CORE.sensitive_attribute  # fairness audit (issue 19)
    fairness_reweigh: bool = _CORE.fairness_reweigh
    equal_opportunity: float = _CORE.equal_opportunity
    # strategies, selection, attacks (issue 10): see simulation/strategy_settings.py
    strategy_options: str = ""
    attack: str = ""
    attackers: float = 0.0
    speeds: str = ""
    selection: str = _SELECTION.mode
    over_select: float = _SELECTION.over_select
    deadline: float = 0.0
    # secure aggregation and dropouts (issue 3): see simulation/secagg_settings.py
    secagg: bool = _SECAGG.enabled
    secagg_degree: int = _SECAGG.degree
    secagg_threshold: int = _SECAGG.threshold
    secagg_clip: float = _SECAGG.clip
    secagg_bits: int = _SECAGG.bits
    dropout: float = 0.0
    dropout_stage: str = DROPOUT_STAGES[0]
    # simulated fleet and third-party apps (issue 8): see simulation/fleet_settings.py
    # and simulation/flower_app.py
    devices: str = ""
    app: str = ""
    app_config: str = ""
    app_workers: str = "auto"  # --app: simulation/app_calls.py (docs/simulation.md)
    # carbon accounting and carbon-aware selection (issue 19): simulation/fleet_settings.py
    carbon_trace: str = ""
    regions: str = ""
    round_hours: float = 0.0
    # the Ray engine (issue 17): simulation/ray_settings.py, simulation/ray_engine.py
    ray_address: str = ""
    ray_workers: int = 0  # 0 = one per CPU of the Ray cluster
    threads: int = 1  # torch intra-op threads of the in-process engine; 0 = torch's default
    # differential privacy (issue 4): see simulation/dp_settings.py
    dp: str = _DP.mode
    epsilon: float | None = _DP.epsilon
    delta: float = _DP.delta
    clip: float = _DP.clip
    noise_multiplier: float | None = _DP.noise_multiplier
    dp_clipping: str = _DP.clipping
    dp_accountant: str = _DP.accountant
    dp_min_clients: int = 0
    sweep_epsilon: str = ""

    @classmethod
    def build(cls, *, config_file: Path | None, overrides: Mapping[str, Any]) -> SimulateSettings:
        """Merge the TOML file (if any) and the flags given; validate the result."""
        values: dict[str, Any] = {}
        known = {f.name: f for f in fields(cls)}
        if config_file is not None:
            from_file = load_toml(config_file)
            _check_types(
                config_file, from_file, known={n: _field_type(f) for n, f in known.items()}
            )
            values.update(from_file)
        values.update({k: v for k, v in overrides.items() if v is not None})
        if values.get("sweep_epsilon") and "dp" not in values:
            values["dp"] = "local"  # a privacy sweep needs DP; DP-SGD at each client unless told
        for key in values:
            if key not in known:
                raise ValueError(
                    f"unknown setting {key.replace('_', '-')!r}; valid keys: "
                    + ", ".join(sorted(n.replace("_", "-") for n in known))
                )
        if values.get("dataset") or values.get("data_dir"):
            values["task"] = dataset_task(values)
        try:
            settings = cls(**values)
        except TypeError as exc:
            raise ValueError(str(exc)) from None
        settings.validate()
        return settings

    def validate(self) -> None:
        """Refuse settings that cannot work, naming the flag to change: the core ones
        with the coordinator's own checks, then each section's. With ``--app`` only the
        fleet's and the app's: fedfleet's own defaults (clients per round, ...) never
        constrain a Flower App's run."""
        if self.engine not in ENGINES:
            raise ValueError(f"unknown engine {self.engine!r}; choose inprocess, flower or ray")
        validate_ray_settings(self)
        if self.app or self.app_config:  # a Flower App: only the settings that apply to it
            validate_fleet_settings(self)
            validate_app_settings(self, fedfleet_flags=self.changed(FEDFLEET_APP_ONLY))
            return
        from strategies import available_strategies

        if self.strategy not in available_strategies():
            raise ValueError(
                f"unknown strategy {self.strategy!r}; choose one of: "
                + ", ".join(available_strategies())
            )
        core = self.run_config()  # the coordinator's own validation
        core_rc = core.as_run_config()
        validate_strategy_settings(self, core=core_rc)
        validate_secagg_settings(self)
        run_config = {**core_rc, **self.feature_run_config()}
        validate_secagg_run_config(run_config, core=core)
        validate_fleet_settings(self)
        validate_dp_settings(self, core=core, run_config=run_config)
        if self.dataset:  # the data is there and splits as asked, before a run folder
            from tasks.hf_data import check

            check(self.task, num_clients=self.clients, partition=self.partition, seed=self.seed)

    def changed(self, names: tuple[str, ...]) -> list[str]:
        """Those of ``names`` whose value differs from its default, in order."""
        defaults = {f.name: f.default for f in fields(self)}
        return [name for name in names if getattr(self, name) != defaults[name]]

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
            momentum=self.momentum,
            partition=self.partition,
            seed=self.seed,
            fraction_evaluate=self.fraction_evaluate,
            sensitive_attribute=self.sensitive_attribute,
            fairness_reweigh=self.fairness_reweigh,
            equal_opportunity=self.equal_opportunity,
            out_dir=out_dir,
        )
        config.validate()
        return config

    def feature_run_config(self) -> RunConfigDict:
        """Run-config keys of the feature switches (beyond the coordinator's core keys)."""
        return {
            **strategy_run_config(self),
            **secagg_run_config(self),
            **fleet_run_config(self),
            **dp_run_config(self),
        }

    def flower_run_config(self, *, out_dir: str = "") -> RunConfigDict:
        """The whole run config of a run into ``out_dir``: core keys, then features'."""
        return {**self.run_config(out_dir=out_dir).as_run_config(), **self.feature_run_config()}


def dataset_task(values: Mapping[str, Any]) -> str:
    """The task name of ``--dataset`` (``hf:NAME[@DIR]``, tasks/hf_data.py); refuses
    ``--task`` beside it and ``--data-dir`` without it."""
    dataset, data_dir = str(values.get("dataset") or ""), str(values.get("data_dir") or "")
    if not dataset:
        raise ValueError("--data-dir needs --dataset NAME (femnist, cifar10, shakespeare, ...)")
    if values.get("task"):
        raise ValueError("give --task or --dataset, not both (a dataset brings its own model)")
    from tasks.hf_data import task_name

    return task_name(dataset, data_dir)


def _field_type(field: Any) -> type:
    """The scalar type a setting holds (``int | None`` settings hold ints, other
    ``X | None`` settings floats)."""
    if field.default is None:
        return int if str(field.type).startswith("int") else float
    return type(field.default)


def _check_types(path: Path, values: Mapping[str, Any], *, known: Mapping[str, type]) -> None:
    """One line naming the key, the value and the type wanted, instead of a traceback."""
    for name, value in values.items():
        if name in known and (error := toml_type_error(name.replace("_", "-"), value, known[name])):
            raise ValueError(f"config file {path}: {error}")


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
