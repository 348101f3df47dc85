"""``fedfleet simulate`` flags of differential privacy, as run-config keys.

``--dp local|central|distributed --epsilon E --delta D --clip C [--noise-multiplier Z]
[--dp-clipping fixed|adaptive] [--dp-accountant rdp|prv] [--dp-min-clients N]`` →
``dp``, ``dp-epsilon``, ... (read by ``DPConfig.from_run_config`` in the clients and by
``coordinator.dp`` in the coordinator). ``--sweep-epsilon 0.5,1,2`` runs one simulation
per ε (``simulation.privacy_sweep``). Validation happens here, before any run folder
exists, with the coordinator's own checks and δ < 1/N for the smallest client.

Simulated clients keep their privacy ledgers in one SQLite file of the run,
``<out>/privacy_ledger.sqlite`` (rows keyed ``client-<partition-id>``), so a run's
spending can be audited after it finished; nothing is shared between runs.
"""

from __future__ import annotations

import math
from typing import Protocol

from coordinator.config import RunConfig
from privacy.dp import DPConfig
from simulation.run_config import RunConfigDict


class DPFields(Protocol):
    """The simulate settings this section reads."""

    @property
    def task(self) -> str: ...
    @property
    def clients(self) -> int: ...
    @property
    def partition(self) -> str: ...
    @property
    def seed(self) -> int: ...
    @property
    def app(self) -> str: ...
    @property
    def dp(self) -> str: ...
    @property
    def epsilon(self) -> float | None: ...
    @property
    def delta(self) -> float: ...
    @property
    def clip(self) -> float: ...
    @property
    def noise_multiplier(self) -> float | None: ...
    @property
    def dp_clipping(self) -> str: ...
    @property
    def dp_accountant(self) -> str: ...
    @property
    def dp_min_clients(self) -> int: ...
    @property
    def sweep_epsilon(self) -> str: ...


def dp_config(settings: DPFields) -> DPConfig:
    """The run's :class:`DPConfig` from the simulate settings (not yet validated)."""
    return DPConfig(
        mode=str(settings.dp).strip().lower() or "none",  # type: ignore[arg-type]
        epsilon=settings.epsilon,
        delta=float(settings.delta),
        clip=float(settings.clip),
        noise_multiplier=settings.noise_multiplier,
        clipping=str(settings.dp_clipping),  # type: ignore[arg-type]
        accountant=str(settings.dp_accountant),  # type: ignore[arg-type]
        min_clients=int(settings.dp_min_clients) or None,
    )


def dp_run_config(settings: DPFields) -> RunConfigDict:
    """The run-config keys of these settings' differential privacy."""

    config = dp_config(settings)
    return config.as_run_config() if config.enabled else {}


def parse_sweep(text: str) -> list[float]:
    """``"0.5,1,2"`` → ``[0.5, 1.0, 2.0]``; every ε must be a positive number."""
    values = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            value = float(part)
        except ValueError:
            raise ValueError(
                f"--sweep-epsilon value {part!r} is not a number; e.g. --sweep-epsilon 0.5,1,2"
            ) from None
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"--sweep-epsilon value {part} must be a positive number")
        values.append(value)
    if not values:
        raise ValueError("--sweep-epsilon needs at least one ε, e.g. --sweep-epsilon 0.5,1,2")
    return values


def smallest_client_records(settings: DPFields) -> int:
    """Training records of the smallest simulated client (N of the local δ < 1/N rule)."""
    import numpy as np

    from edge_client.data import cached_partitions, partition_data

    parts = cached_partitions(settings.task, settings.clients, settings.partition, settings.seed)
    smallest = int(np.argmin(parts.sizes()))
    data = partition_data(
        task_name=settings.task,
        partition_id=smallest,
        num_partitions=settings.clients,
        partition=settings.partition,
        seed=settings.seed,
    )
    return len(data.x_train)


def validate_dp_settings(settings: DPFields, *, core: RunConfig, run_config: RunConfigDict) -> None:
    """Refuse meaningless DP settings, naming the flag to change.

    ``core`` is the run's coordinator config, ``run_config`` the whole run config."""
    config = dp_config(settings)
    if settings.sweep_epsilon:
        parse_sweep(settings.sweep_epsilon)
        if not config.enabled:
            raise ValueError("--sweep-epsilon needs --dp local|central|distributed")
        if config.noise_multiplier is not None:
            raise ValueError(
                "--sweep-epsilon calibrates the noise to each ε; drop --noise-multiplier"
            )
        config = DPConfig(**{**config.__dict__, "epsilon": parse_sweep(settings.sweep_epsilon)[0]})
    if not config.enabled:
        config.validate()
        return
    if settings.app:
        raise ValueError("--dp works with fedfleet's ClientApp, not with --app")
    from coordinator.privacy_checks import check_dp_setup

    if config.mode != "local":
        config.validate(dataset_size=settings.clients)
        check_dp_setup(config, core, {**run_config, **config.as_run_config()})
        return
    # Every flag on its own first; only δ < 1/N needs the task's data (and torch), so a
    # bad flag is refused without loading them (tests/test_cli_startup.py).
    config.validate()
    check_dp_setup(config, core, {**run_config, **config.as_run_config()})
    config.validate(dataset_size=smallest_client_records(settings))
