"""The coordinator's typed run settings, built from a Flower run config.

One object per run, built in ``RunConfig.from_run_config`` (a factory), validated
once here with messages that say which value to change.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks import PartitionSpec, available_tasks, is_task_name

if TYPE_CHECKING:
    from tasks.base import TrainDefaults

_TYPE_NAMES = {
    bool: "a boolean (true or false)",
    int: "an integer",
    float: "a number",
    str: "a string",
}


def _kind(value: Any) -> str:
    for kind in (bool, int, float, str):
        if isinstance(value, kind):
            return _TYPE_NAMES[kind]
    return f"a {type(value).__name__}"


def toml_type_error(key: str, value: Any, expected: type) -> str | None:
    """One line naming ``key``, ``value`` and the type wanted when a TOML value has the
    wrong type (``rounds = "3"``), else None. A float setting accepts an integer."""
    if expected is bool:
        ok = isinstance(value, bool)
    elif expected is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif expected is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    else:
        ok = isinstance(value, expected)
    if ok:
        return None
    shown = json.dumps(value) if isinstance(value, str | bool) else repr(value)
    hint = ""
    if isinstance(value, str) and expected in (int, float):
        with contextlib.suppress(ValueError):
            hint = f" (write {key} = {expected(value)!r}, without quotes)"
    return f"{key} = {shown} is {_kind(value)}; expected {_TYPE_NAMES[expected]}{hint}"


@dataclass(frozen=True)
class RunConfig:
    """Core settings of a federated run (feature switches parse their own keys).

    ``clients_per_round`` clients are sampled each round out of ``num_clients``;
    ``round_timeout`` is the seconds a round waits for replies; ``min_clients`` is the
    quorum of successful replies below which a round is not applied. ``initial_model``
    is a ``model.pt`` (a state dict of the task's model) to start from instead of a
    fresh model: retraining a deployed model warm (``fedfleet run submit --retrain``).
    ``sensitive_attribute`` (the task's declared one, or "") makes each federated
    evaluation count per group of it (tasks/fairness.py); it needs ``fraction_evaluate``.
    ``fairness_reweigh`` makes clients resample their training data so the label does not
    depend on that attribute's group (Kamiran & Calders 2012); it needs the attribute.
    ``equal_opportunity`` > 0 is the step rate of the server's equal-opportunity
    multipliers (coordinator.fairness.EqualOpportunityWeights; 0 = off); it needs the
    attribute.

    The local-training hyper-parameters (``local_epochs``, ``batch_size``,
    ``learning_rate``, ``momentum``) default to ``None``: the task's own
    (``tasks.TrainDefaults``, their one home), filled in by :meth:`with_task_defaults`
    when the run starts. A ``None`` is left out of the Flower run config.
    """

    task: str = "digits-cnn"
    strategy: str = "fedavg"
    num_server_rounds: int = 3
    num_clients: int = 10
    clients_per_round: int = 10
    local_epochs: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    momentum: float | None = None
    partition: str = "iid"
    seed: int = 0
    fraction_evaluate: float = 0.0
    round_timeout: float = 3600.0
    min_clients: int = 1
    out_dir: str = ""
    initial_model: str = ""
    sensitive_attribute: str = ""
    fairness_reweigh: bool = False
    equal_opportunity: float = 0.0

    @classmethod
    def key_types(cls) -> dict[str, type]:
        """Each run-config key (kebab-case) and the type its value must have."""
        return {
            name.replace("_", "-"): TASK_DEFAULTED.get(name, type(default))
            for name, default in asdict(cls()).items()
        }

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> RunConfig:
        """Read the kebab-case keys of a Flower run config; unknown keys are left to
        the features that own them (``secagg-*``, ``dp-*``, ``strategy-*``)."""
        values: dict[str, Any] = {}
        for key, kind in cls.key_types().items():
            if key in run_config:
                try:
                    values[key.replace("-", "_")] = kind(run_config[key])
                except (TypeError, ValueError):
                    raise ValueError(
                        f"run config {key}={run_config[key]!r} is not a valid {kind.__name__}"
                    ) from None
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        """Refuse settings that cannot work, naming the value to change."""
        if not is_task_name(self.task):
            raise ValueError(
                f"unknown task {self.task!r}; choose one of: {', '.join(available_tasks())}"
            )
        PartitionSpec.parse(self.partition)
        for name in (
            "num_server_rounds",
            "num_clients",
            "clients_per_round",
            "local_epochs",
            "batch_size",
            "min_clients",
        ):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name.replace('_', '-')} must be >= 1")
        if self.clients_per_round > self.num_clients:
            raise ValueError(
                f"clients-per-round ({self.clients_per_round}) is larger than clients "
                f"({self.num_clients}); lower --clients-per-round or raise --clients"
            )
        if self.min_clients > self.clients_per_round:
            raise ValueError(
                f"min-clients ({self.min_clients}) is larger than clients-per-round "
                f"({self.clients_per_round}); lower min-clients"
            )
        if self.learning_rate is not None and not (
            self.learning_rate > 0 and math.isfinite(self.learning_rate)
        ):
            raise ValueError("learning-rate must be a positive number")
        if self.momentum is not None and not 0.0 <= self.momentum < 1.0:
            raise ValueError("momentum must be >= 0 and < 1 (0 = plain SGD)")
        if not 0.0 <= self.fraction_evaluate <= 1.0:
            raise ValueError("fraction-evaluate must be between 0 and 1")
        if not self.round_timeout > 0:
            raise ValueError("round-timeout must be > 0 seconds")
        if self.sensitive_attribute:
            self._validate_sensitive_attribute()
        if self.fairness_reweigh and not self.sensitive_attribute:
            raise ValueError(
                "fairness-reweigh needs the task's sensitive attribute: add "
                "--sensitive-attribute (and --fraction-evaluate)"
            )
        if self.equal_opportunity < 0 or not math.isfinite(self.equal_opportunity):
            raise ValueError("equal-opportunity must be a step rate >= 0 (0 = off; try 2)")
        if self.equal_opportunity > 0 and not self.sensitive_attribute:
            raise ValueError(
                "equal-opportunity needs the task's sensitive attribute: add "
                "--sensitive-attribute (and --fraction-evaluate)"
            )
        if self.initial_model and not Path(self.initial_model).is_file():
            raise ValueError(
                f"initial-model {self.initial_model!r} is not a file; give the path of a "
                "model.pt on the coordinator (a run's model.pt, or a registry checkpoint)"
            )

    def _validate_sensitive_attribute(self) -> None:
        from tasks import get_task

        declared = get_task(self.task).sensitive_attribute
        if self.sensitive_attribute != declared:
            has = f"only {declared!r}" if declared else "none"
            raise ValueError(
                f"task {self.task!r} has no sensitive attribute {self.sensitive_attribute!r} "
                f"(it has {has}); name the task's attribute or leave --sensitive-attribute out"
            )
        if self.fraction_evaluate <= 0:
            raise ValueError(
                "sensitive-attribute needs federated evaluation: set --fraction-evaluate "
                "above 0 (e.g. 1.0)"
            )

    def as_run_config(self) -> dict[str, Any]:
        """The kebab-case mapping Flower passes around (inverse of from_run_config);
        a setting left to the task (``None``) is left out."""
        return {
            name.replace("_", "-"): value
            for name, value in asdict(self).items()
            if value is not None
        }

    def train_defaults(self) -> TrainDefaults:
        """The local-training settings of this run: the task's defaults
        (``tasks.TrainDefaults``), with each one this config sets in their place
        (imports the task's module)."""
        from tasks import get_task

        given = {n: getattr(self, n) for n in TASK_DEFAULTED if getattr(self, n) is not None}
        return replace(get_task(self.task).defaults, **given)

    def with_task_defaults(self) -> RunConfig:
        """This config with every training setting it leaves to the task filled in."""
        train = self.train_defaults()
        return replace(self, **{name: getattr(train, name) for name in TASK_DEFAULTED})


# Settings whose default is the task's (tasks.TrainDefaults field names), with their type.
TASK_DEFAULTED: dict[str, type] = {
    "local_epochs": int,
    "batch_size": int,
    "learning_rate": float,
    "momentum": float,
}
