"""The strategy side assembled for the round loop, and the guard inside a real run."""

from __future__ import annotations

from coordinator.buffered import BufferedExchange, TopUpSelector
from coordinator.config import RunConfig
from coordinator.loop import PlainExchange
from coordinator.results import RoundRecord
from coordinator.strategy_setup import RecordingExchange, build_strategy_setup
from strategies.selection import DeviceAwareSelector, RandomSelector

CONFIG = RunConfig(task="breast-cancer-mlp", num_clients=20, clients_per_round=10)


def _names(filters) -> list[str]:
    return [getattr(f, "func", f).__name__ for f in filters]


def test_synchronous_setup_guards_every_reply() -> None:
    setup = build_strategy_setup(CONFIG, {})
    assert isinstance(setup.exchange, RecordingExchange)
    assert isinstance(setup.exchange.inner, PlainExchange)
    assert isinstance(setup.selector, RandomSelector)
    # the update guard, then the sites' measured energy (summed when replies carry it)
    assert _names(setup.reply_filters) == ["filter", "measured_energy"]


def test_secure_aggregation_replaces_the_exchange_and_drops_the_guard() -> None:
    secure = PlainExchange()
    setup = build_strategy_setup(CONFIG, {"secagg": True}, exchange=secure)
    assert setup.exchange is secure
    assert _names(setup.reply_filters) == ["measured_energy"]


def test_device_aware_selection_on_the_simulated_clock() -> None:
    rc = {"selection": "device-aware", "clock": "simulated", "deadline-s": 30, "over-select": 0.3}
    setup = build_strategy_setup(CONFIG, rc)
    assert isinstance(setup.selector, DeviceAwareSelector)
    assert len(setup.selector.select(1, list(range(1000, 1020)))) == 13
    assert _names(setup.reply_filters) == ["filter", "observe", "filter", "measured_energy"]


def test_fedbuff_gets_the_buffered_exchange_and_top_up_selection() -> None:
    config = RunConfig(
        task="breast-cancer-mlp", strategy="fedbuff", num_clients=20, clients_per_round=8
    )
    setup = build_strategy_setup(config, {"strategy-buffer-size": 3})
    assert isinstance(setup.exchange, RecordingExchange)
    assert isinstance(setup.exchange.inner, BufferedExchange)
    assert setup.exchange.inner.buffer_size == 3
    assert isinstance(setup.selector, TopUpSelector) and setup.selector.concurrency == 8
    assert _names(setup.reply_filters) == ["filter", "round_stats", "measured_energy"]


def test_quorum_rises_to_what_the_aggregator_needs() -> None:
    config = RunConfig(
        task="breast-cancer-mlp", strategy="bulyan", num_clients=20, clients_per_round=12
    )
    assert build_strategy_setup(config, {"strategy-byzantine": 2}).min_clients == 11


def test_oversized_updates_are_rejected_and_counted_in_a_real_run() -> None:
    # Prepare: 10 clients, 2 of which boost their update 20x; bound the norm.
    from coordinator.app import build_server_app
    from edge_client.app import build_client_app
    from simulation.attacks import attack_mod
    from simulation.inprocess import run_inprocess

    # The bound of 0.5 sits between honest and boosted updates of one plain-SGD epoch
    # (the task's defaults train 5 epochs with momentum: honest updates pass 0.5 too).
    config = RunConfig(
        task="breast-cancer-mlp",
        num_clients=10,
        clients_per_round=10,
        num_server_rounds=2,
        local_epochs=1,
        momentum=0.0,
    )
    run_config = {
        **config.as_run_config(),
        "attack": "scale:20",
        "attackers": 0.2,
        "strategy-max-update-norm": 0.5,
    }
    records: list[RoundRecord] = []
    # Execute
    run_inprocess(
        server_app=build_server_app(on_round=records.append),
        client_app=build_client_app(mods=[attack_mod]),
        num_nodes=10,
        run_config=run_config,
    )
    # Assert: the two attackers are rejected each round; eight honest updates are applied.
    assert [r.extra["rejected_norm"] for r in records] == [2.0, 2.0]
    assert [r.clients for r in records] == [8, 8]
    assert all(r.failures == 2 and r.applied for r in records)
    assert all(r.extra["update_norm_max"] <= 0.5 for r in records)
