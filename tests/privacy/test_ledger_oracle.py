"""Oracle: the ledger's ε of a recorded history equals independent computations."""

from __future__ import annotations

import warnings

import pytest

from privacy.dp import Mechanism
from privacy.dp.rdp import DEFAULT_ORDERS
from privacy.ledger import LEDGER_FILE, Budget, PrivacyLedger

DELTA = 1e-5
# A site's realistic history: five rounds of one plan, then two with other settings.
HISTORY = [Mechanism(1 / 21, 1.27, 21)] * 5 + [
    Mechanism(0.1, 0.9, 30),
    Mechanism(0.05, 1.5, 40),
]


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> PrivacyLedger:
    ledger = PrivacyLedger(tmp_path_factory.mktemp("oracle") / LEDGER_FILE, site="s")
    for i, mechanism in enumerate(HISTORY):
        decision = ledger.check_and_reserve(
            task="t", run_id="r", server_round=i, mechanism=mechanism, budget=Budget(None, DELTA)
        )
        ledger.commit(decision.entry_id)
    return ledger


def _dp_event(history: list[Mechanism]):
    import dp_accounting

    return dp_accounting.ComposedDpEvent(
        [
            dp_accounting.SelfComposedDpEvent(
                dp_accounting.PoissonSampledDpEvent(
                    m.sample_rate, dp_accounting.GaussianDpEvent(m.noise_multiplier)
                ),
                m.steps,
            )
            for m in history
        ]
    )


def test_rdp_epsilon_matches_dp_accounting_within_one_percent(ledger: PrivacyLedger) -> None:
    from dp_accounting import rdp

    reference = rdp.RdpAccountant(orders=list(DEFAULT_ORDERS))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference.compose(_dp_event(HISTORY))
        expected = reference.get_epsilon(DELTA)
    assert ledger.spent(task="t", delta=DELTA, accountant="rdp") == pytest.approx(
        expected, rel=0.01
    )


@pytest.mark.slow
def test_prv_epsilon_matches_dp_accounting_pld_within_one_percent(
    ledger: PrivacyLedger,
) -> None:
    from dp_accounting import pld

    reference = pld.PLDAccountant(value_discretization_interval=1e-3)
    reference.compose(_dp_event(HISTORY))
    assert ledger.spent(task="t", delta=DELTA, accountant="prv") == pytest.approx(
        reference.get_epsilon(DELTA), rel=0.01
    )
