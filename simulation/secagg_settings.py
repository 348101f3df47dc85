"""``fedfleet simulate`` flags of secure aggregation and dropouts, as run-config keys.

``--secagg --secagg-degree K --secagg-threshold T --secagg-clip R --secagg-bits B`` →
``secagg``, ``secagg-degree``, ... (read by ``privacy.secagg.SecAggConfig`` in the
coordinator); ``--dropout P --dropout-stage S`` → ``dropout``, ``dropout-stage`` (read
by ``simulation.dropout.dropout_mod`` in the clients). Validation happens here, before
any run folder exists, with the coordinator's own checks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from simulation.dropout import RC_DROPOUT, RC_DROPOUT_STAGE, check_dropout

if TYPE_CHECKING:
    from simulation.settings import SimulateSettings

RunConfigDict = dict[str, bool | int | float | str]


def secagg_run_config(settings: SimulateSettings) -> RunConfigDict:
    """The run-config keys of these settings' secure aggregation and dropouts."""
    rc: RunConfigDict = {}
    if settings.secagg:
        rc.update(
            {
                "secagg": True,
                "secagg-degree": int(settings.secagg_degree),
                "secagg-threshold": int(settings.secagg_threshold),
                "secagg-clip": float(settings.secagg_clip),
                "secagg-bits": int(settings.secagg_bits),
            }
        )
    if settings.dropout:
        rc[RC_DROPOUT] = float(settings.dropout)
        rc[RC_DROPOUT_STAGE] = str(settings.dropout_stage)
    return rc


def validate_secagg_settings(settings: SimulateSettings) -> None:
    """Refuse bad secure-aggregation or dropout settings, naming the flag to change."""
    from coordinator.secagg_exchange import secagg_from_run_config
    from strategies.validation import check_run_config

    check_dropout(float(settings.dropout), str(settings.dropout_stage))
    core = settings.run_config()
    rc = {**core.as_run_config(), **settings.feature_run_config()}
    secagg_from_run_config(rc, core)
    check_run_config(rc)  # e.g. a strategy that needs individual updates under --secagg
