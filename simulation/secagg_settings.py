"""``fedfleet simulate`` flags of secure aggregation and dropouts, as run-config keys.

``--secagg --secagg-degree K --secagg-threshold T --secagg-clip R --secagg-bits B`` →
``secagg``, ``secagg-degree``, ... (read by ``privacy.secagg.SecAggConfig`` in the
coordinator); ``--dropout P --dropout-stage S`` → ``dropout``, ``dropout-stage`` (read
by ``simulation.dropout.dropout_mod`` in the clients). Validation happens here, before
any run folder exists, with the coordinator's own checks.
"""

from __future__ import annotations

from typing import Protocol

from coordinator.config import RunConfig
from privacy.secagg.config import RUN_CONFIG_KEYS
from simulation.dropout import RC_DROPOUT, RC_DROPOUT_STAGE, check_dropout
from simulation.run_config import RunConfigDict


class SecAggFields(Protocol):
    """The simulate settings this section reads."""

    @property
    def secagg(self) -> bool: ...
    @property
    def secagg_degree(self) -> int: ...
    @property
    def secagg_threshold(self) -> int: ...
    @property
    def secagg_clip(self) -> float: ...
    @property
    def secagg_bits(self) -> int: ...
    @property
    def dropout(self) -> float: ...
    @property
    def dropout_stage(self) -> str: ...


def secagg_run_config(settings: SecAggFields) -> RunConfigDict:
    """The run-config keys of these settings' secure aggregation and dropouts."""
    rc: RunConfigDict = {}
    if settings.secagg:
        rc.update(
            {
                RUN_CONFIG_KEYS["enabled"]: True,
                RUN_CONFIG_KEYS["degree"]: int(settings.secagg_degree),
                RUN_CONFIG_KEYS["threshold"]: int(settings.secagg_threshold),
                RUN_CONFIG_KEYS["clip"]: float(settings.secagg_clip),
                RUN_CONFIG_KEYS["bits"]: int(settings.secagg_bits),
            }
        )
    if settings.dropout:
        rc[RC_DROPOUT] = float(settings.dropout)
        rc[RC_DROPOUT_STAGE] = str(settings.dropout_stage)
    return rc


def validate_secagg_settings(settings: SecAggFields) -> None:
    """Refuse bad dropout settings, naming the flag to change."""
    check_dropout(float(settings.dropout), str(settings.dropout_stage))


def validate_secagg_run_config(run_config: RunConfigDict, *, core: RunConfig) -> None:
    """Refuse a run config whose secure aggregation cannot work (the coordinator's own
    checks); ``core`` is the run's coordinator config, ``run_config`` the whole one."""
    from coordinator.privacy_checks import secagg_from_run_config
    from strategies.validation import check_run_config

    secagg_from_run_config(run_config, core)  # None when secure aggregation is off
    check_run_config(run_config)  # e.g. a strategy that needs individual updates under --secagg
