"""DP configuration: meaningless settings are refused with a message naming the value."""

from __future__ import annotations

import pytest

from privacy.dp import DPConfig, client_level_noise_multiplier, epsilon, local_mechanism


@pytest.mark.parametrize(
    ("config", "dataset_size", "message"),
    [
        (DPConfig(mode="local", epsilon=0.0), None, "epsilon 0.0 must be a positive"),
        (DPConfig(mode="local", epsilon=-2.0), None, "epsilon -2.0"),
        (DPConfig(mode="central", noise_multiplier=0.0), None, "noise multiplier 0.0"),
        (DPConfig(mode="local"), None, "needs --epsilon"),
        (DPConfig(mode="local", epsilon=1.0, delta=0.01), 200, "delta 0.01 is not below 1/N"),
        (DPConfig(mode="central", epsilon=1.0, delta=0.2), 10, "1/10"),
        (DPConfig(mode="local", epsilon=1.0, delta=1.5), None, r"delta 1.5 must be in \(0, 1\)"),
        (DPConfig(mode="local", epsilon=1.0, clip=0.0), None, "clipping norm 0.0"),
        (DPConfig(mode="central", epsilon=1.0, noise_multiplier=1.0), None, "not both"),
        (DPConfig(mode="local", epsilon=1.0, clipping="adaptive"), None, "only with dp=central"),
        (DPConfig(mode="central", epsilon=1.0, accountant="gdp"), None, "accountant 'gdp'"),  # type: ignore[arg-type]
        (DPConfig(mode="secret"), None, "unknown dp mode 'secret'"),  # type: ignore[arg-type]
        (DPConfig(epsilon=1.0), None, "dp is 'none'"),
        (DPConfig(mode="distributed", epsilon=1.0, min_clients=0), None, "dp-min-clients 0"),
        (DPConfig(mode="local", epsilon=1.0, grad_sample_mode="ew"), None, "grad-sample mode"),  # type: ignore[arg-type]
    ],
)
def test_meaningless_configurations_are_refused(
    config: DPConfig, dataset_size: int | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        config.validate(dataset_size=dataset_size)


def test_valid_configurations_pass() -> None:
    DPConfig().validate()
    DPConfig(mode="local", epsilon=2.0).validate(dataset_size=1000)
    DPConfig(mode="local", epsilon=2.0, noise_multiplier=1.0).validate()  # budget + noise
    DPConfig(mode="central", noise_multiplier=1.0, clipping="adaptive").validate(dataset_size=50)


def test_run_config_round_trip() -> None:
    config = DPConfig(mode="central", epsilon=3.0, delta=1e-6, clip=0.5, clipping="adaptive")
    assert DPConfig.from_run_config(config.as_run_config()) == config
    assert DPConfig.from_run_config({}) == DPConfig()
    with pytest.raises(ValueError, match="must be a number"):
        DPConfig.from_run_config({"dp": "local", "dp-epsilon": "lots"})
    with pytest.raises(ValueError, match="delta 0.0"):
        DPConfig.from_run_config({"dp": "local", "dp-epsilon": 1.0, "dp-delta": 0.0})
    with pytest.raises(ValueError, match="clipping norm 0.0"):
        DPConfig.from_run_config({"dp": "local", "dp-epsilon": 1.0, "dp-clip": 0})


def test_local_mechanism_matches_opacus_poisson_loader_and_calibration() -> None:
    # Prepare: 100 records, batch 16 → 7 batches an epoch, rate 1/7
    config = DPConfig(mode="local", epsilon=2.0)
    # Execute
    plan = local_mechanism(config, num_examples=100, batch_size=16, local_epochs=2, rounds=5)
    # Assert
    assert plan.sample_rate == pytest.approx(1 / 7)
    assert plan.steps == 14
    spent = epsilon([plan] * 5, delta=config.delta)
    assert 0.99 * 2.0 <= spent <= 2.0


def test_client_level_noise_is_the_same_for_everyone_and_reaches_the_target() -> None:
    config = DPConfig(mode="central", epsilon=4.0)
    a = client_level_noise_multiplier(config, clients_per_round=10, num_clients=100, rounds=20)
    b = client_level_noise_multiplier(config, clients_per_round=10, num_clients=100, rounds=20)
    assert a == b > 0
    from privacy.dp import Mechanism

    assert epsilon([Mechanism(0.1, a, 20)], delta=1e-5) <= 4.0
