"""FedBuff's buffered exchange on both clocks, and FedBuff against synchronous FedAvg
on heavy-tailed simulated devices."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest
from flwr.app import Error, Message

from coordinator.app import build_server_app
from coordinator.buffered import BufferedExchange, TopUpSelector
from coordinator.results import RoundRecord
from edge_client.app import build_client_app
from simulation.inprocess import run_inprocess
from simulation.settings import SimulateSettings
from simulation.speeds import speed_mod
from strategies.selection import RandomSelector


@dataclass
class DelayedGrid:
    """A Grid stand-in whose reply to node ``n`` shows up after ``delay[n]`` pulls and
    reports ``seconds[n]`` simulated seconds; nodes in ``failing`` reply with an error."""

    make_reply: object
    delay: dict[int, int] = field(default_factory=dict)
    seconds: dict[int, float] = field(default_factory=dict)
    failing: set[int] = field(default_factory=set)
    silent: set[int] = field(default_factory=set)
    pushed: list[int] = field(default_factory=list)
    _pending: dict[str, list] = field(default_factory=dict)
    _n: int = 0

    def push_messages(self, messages):
        ids = []
        for m in messages:
            self._n += 1
            m.metadata.__dict__["_message_id"] = f"id{self._n}"
            node = m.metadata.dst_node_id
            self.pushed.append(node)
            if node in self.failing:
                reply = Message(Error(code=1, reason="boom"), reply_to=m)
            else:
                metrics = {"sim-seconds": self.seconds.get(node, 1.0)}
                reply = self.make_reply(node, {"x": np.zeros(1)}, to=m, metrics=metrics)
            if node not in self.silent:
                self._pending[m.metadata.message_id] = [self.delay.get(node, 0), reply]
            ids.append(m.metadata.message_id)
        return ids

    def pull_messages(self, ids):
        out = []
        for i in ids:
            entry = self._pending.get(i)
            if entry is None:
                continue
            if entry[0] <= 0:
                out.append(self._pending.pop(i)[1])
            else:
                entry[0] -= 1
        return out


def _nodes(replies: list[Message]) -> list[int]:
    return sorted(m.metadata.src_node_id for m in replies)


def test_wall_clock_buffer_returns_once_m_replies_are_in(make_reply, make_instruction) -> None:
    grid = DelayedGrid(make_reply, delay={1: 0, 2: 3, 3: 1, 4: 6})
    exchange = BufferedExchange(buffer_size=2, clock="wall", poll_s=0.0)
    out = exchange.exchange(
        grid, [make_instruction(n) for n in (1, 2, 3, 4)], server_round=1, timeout=5
    )
    assert _nodes(out) == [1, 3]
    assert exchange.in_flight == 2 and exchange.busy_nodes == {2, 4}
    out = exchange.exchange(grid, [], server_round=2, timeout=5)
    assert _nodes(out) == [2, 4] and exchange.in_flight == 0


def test_simulated_clock_orders_by_reported_seconds(make_reply, make_instruction) -> None:
    # All replies are ready at once (like the in-process engine); order comes from seconds.
    grid = DelayedGrid(make_reply, seconds={1: 9.0, 2: 2.0, 3: 5.0, 4: 30.0})
    exchange = BufferedExchange(buffer_size=2, clock="simulated")
    out = exchange.exchange(
        grid, [make_instruction(n) for n in (1, 2, 3, 4)], server_round=1, timeout=5
    )
    assert _nodes(out) == [2, 3] and exchange.now_s == 5.0
    # Node 5 starts at t=5 and takes 1 s: it overtakes node 1 (t=9) and node 4 (t=30).
    grid.seconds[5] = 1.0
    out = exchange.exchange(grid, [make_instruction(5)], server_round=2, timeout=5)
    assert _nodes(out) == [1, 5] and exchange.now_s == 9.0
    _, stats = exchange.round_stats(2, out)
    assert stats == {"in_flight": 1.0, "sim_time_s": 9.0}


def test_errors_come_along_but_do_not_fill_the_buffer(make_reply, make_instruction) -> None:
    grid = DelayedGrid(make_reply, seconds={2: 3.0, 3: 4.0}, failing={1})
    exchange = BufferedExchange(buffer_size=2, clock="simulated")
    out = exchange.exchange(
        grid, [make_instruction(n) for n in (1, 2, 3)], server_round=1, timeout=5
    )
    assert _nodes(out) == [1, 2, 3]
    assert sum(m.has_error() for m in out) == 1


def test_clients_that_never_reply_are_dropped_after_the_timeout(
    make_reply, make_instruction
) -> None:
    grid = DelayedGrid(make_reply, silent={2})
    exchange = BufferedExchange(buffer_size=2, clock="simulated", poll_s=0.0)
    out = exchange.exchange(
        grid, [make_instruction(n) for n in (1, 2)], server_round=1, timeout=0.05
    )
    assert _nodes(out) == [1] and exchange.in_flight == 0


def test_top_up_never_restarts_a_busy_node(make_reply, make_instruction) -> None:
    grid = DelayedGrid(make_reply, seconds={n: float(n) for n in range(1000, 1010)})
    exchange = BufferedExchange(buffer_size=2, clock="simulated")
    selector = TopUpSelector(
        inner=RandomSelector(clients_per_round=4, seed=0), exchange=exchange, concurrency=4
    )
    nodes = list(range(1000, 1010))
    for r in range(1, 8):
        chosen = selector.select(r, nodes)
        assert not set(chosen) & exchange.busy_nodes
        exchange.exchange(grid, [make_instruction(n) for n in chosen], server_round=r, timeout=5)
        assert exchange.in_flight == 2  # 4 started, 2 handed back each round
    assert len(grid.pushed) == 4 + 6 * 2


def test_buffer_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="buffer_size"):
        BufferedExchange(buffer_size=0)


def _simulate(**overrides) -> list[RoundRecord]:
    settings = SimulateSettings.build(config_file=None, overrides=overrides)
    run_config = {**settings.run_config().as_run_config(), **settings.feature_run_config()}
    records: list[RoundRecord] = []
    run_inprocess(
        server_app=build_server_app(on_round=records.append),
        client_app=build_client_app(mods=[speed_mod]),
        num_nodes=settings.clients,
        run_config=run_config,
    )
    return records


def _time_to(records: list[RoundRecord], target: float) -> float:
    return next((r.extra["sim_time_s"] for r in records if r.accuracy >= target), float("inf"))


@pytest.mark.slow
def test_fedbuff_reaches_the_target_sooner_than_fedavg_on_heavy_tailed_devices() -> None:
    # Prepare: 20 clients, Pareto(1) device slowdowns (infinite variance), 10 at a time.
    common = {
        "task": "breast-cancer-mlp",
        "clients": 20,
        "clients_per_round": 10,
        "lr": 0.05,
        "speeds": "pareto:1.0",
    }
    target = 0.87
    # Execute
    fedavg = _simulate(strategy="fedavg", rounds=6, **common)
    fedbuff = _simulate(strategy="fedbuff", rounds=12, strategy_options="buffer-size=5", **common)
    # Assert: both learn; FedBuff gets there in less simulated wall-clock time.
    t_avg, t_buff = _time_to(fedavg, target), _time_to(fedbuff, target)
    assert t_avg < float("inf") and t_buff < float("inf")
    assert t_buff < t_avg
    assert all(r.failures == 0 and r.clients == 5 for r in fedbuff)
    assert max(r.extra["train_staleness-max"] for r in fedbuff) >= 1  # really asynchronous
    assert all(r.extra["in_flight"] == 5 for r in fedbuff)
