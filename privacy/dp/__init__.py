"""Differential privacy: accounting, noise calibration, configuration (pure functions).

``privacy.dp.fused`` is DP-SGD's per-sample clipping step with Opacus's semantics
(torch; the site's ``fused`` mode and the simulator's cohort trainer use it). Local
training lives on the device side (``edge_client.dp_training``), the
persistent budget ledger in ``privacy.ledger``, the coordinator's client-level DP in
``coordinator.dp``. See ``docs/privacy.md``.
"""

from privacy.dp.accounting import (
    ACCOUNTANTS,
    Accountant,
    Mechanism,
    calibrate_noise,
    epsilon,
    prv_epsilon,
    rdp_epsilon,
)
from privacy.dp.config import (
    AVERAGING_STRATEGIES,
    DP_MODES,
    DPConfig,
    DPMode,
    client_level_noise_multiplier,
    client_sampling_rate,
    local_mechanism,
)

__all__ = [
    "ACCOUNTANTS",
    "AVERAGING_STRATEGIES",
    "DP_MODES",
    "Accountant",
    "DPConfig",
    "DPMode",
    "Mechanism",
    "calibrate_noise",
    "client_level_noise_multiplier",
    "client_sampling_rate",
    "epsilon",
    "local_mechanism",
    "prv_epsilon",
    "rdp_epsilon",
]
