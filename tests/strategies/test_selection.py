"""Client selection: random, device-aware, over-selection, deadline, quorum settings."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.loop import UniformSelector
from strategies.selection import (
    DeviceAwareSelector,
    NodeStatus,
    RandomSelector,
    RoundDeadline,
    SelectionConfig,
    over_selected,
)

NODES = list(range(1000, 1020))


def test_random_selector_draws_what_the_loop_uniform_selector_draws() -> None:
    ours = RandomSelector(clients_per_round=5, seed=3)
    loops = UniformSelector(clients_per_round=5, seed=3)
    for r in (1, 2, 3):
        assert ours.select(r, NODES) == loops.select(r, NODES)


@settings(max_examples=30, deadline=None)
@given(target=st.integers(1, 200), fraction=st.floats(0, 2))
def test_over_selection_starts_at_least_the_target(target: int, fraction: float) -> None:
    count = over_selected(target, fraction)
    assert target <= count <= np.ceil(target * (1 + fraction)) + 1
    assert over_selected(target, 0.0) == target


def test_over_selection_starts_more_clients() -> None:
    assert len(RandomSelector(clients_per_round=10, seed=0, over_select=0.3).select(1, NODES)) == 13


def _statuses(**by_node: NodeStatus):
    return lambda node: by_node.get(f"n{node}")


def test_unavailable_devices_are_never_chosen() -> None:
    offline = {f"n{n}": NodeStatus(available=False) for n in NODES[:15]}
    selector = DeviceAwareSelector(clients_per_round=10, seed=0, telemetry=_statuses(**offline))
    for r in range(1, 6):
        chosen = selector.select(r, NODES)
        assert set(chosen) == set(NODES[15:])  # only 5 online, even though 10 were wanted


def test_low_battery_is_skipped_unless_charging_or_needed() -> None:
    status = {
        **{f"n{n}": NodeStatus(battery=0.05, charging=False) for n in NODES[:10]},
        **{f"n{n}": NodeStatus(battery=0.05, charging=True) for n in NODES[10:12]},
    }
    selector = DeviceAwareSelector(clients_per_round=8, seed=1, telemetry=_statuses(**status))
    chosen = selector.select(1, NODES)
    assert not set(chosen) & set(NODES[:10])
    # Asking for more than the healthy devices relaxes the battery rule (quorum first).
    assert len(selector.select_count(2, NODES, 15)) == 15


def test_failed_clients_back_off_exponentially(make_reply) -> None:
    selector = DeviceAwareSelector(clients_per_round=20, seed=0, cooldown_rounds=1)
    selector.select_count(1, NODES[:4], 4)
    # Round 1: node 1000 fails (no reply), the others reply.
    selector.observe(1, [make_reply(n, {"x": np.zeros(1)}) for n in NODES[1:4]])
    chosen = selector.select_count(2, NODES[:4], 3)
    assert 1000 not in chosen
    selector.observe(2, [make_reply(n, {"x": np.zeros(1)}) for n in chosen])
    # A second failure doubles the cool-down: skipped for 2 rounds after round 3.
    assert selector.select_count(3, [1000], 1) == [1000]  # the only candidate: rule relaxed
    _, stats = selector.observe(3, [])
    assert stats["selection_failed"] == 1
    assert 1000 not in selector.select_count(5, NODES[:4], 3)
    assert 1000 in selector.select_count(6, NODES[:4], 4)


def test_faster_devices_are_chosen_more_often() -> None:
    speed = {f"n{n}": NodeStatus(speed=10.0 if n < 1005 else 0.1) for n in NODES}
    selector = DeviceAwareSelector(clients_per_round=5, seed=0, telemetry=_statuses(**speed))
    fast = sum(len(set(selector.select(r, NODES)) & set(NODES[:5])) for r in range(1, 41))
    assert fast / (40 * 5) > 0.7  # uniform would give 0.25


def test_observed_seconds_steer_selection_without_telemetry(make_reply) -> None:
    selector = DeviceAwareSelector(clients_per_round=5, seed=0)
    selector.select_count(0, NODES, 20)
    selector.observe(
        0,
        [
            make_reply(n, {"x": np.zeros(1)}, metrics={"sim-seconds": 1.0 if n < 1005 else 100.0})
            for n in NODES
        ],
    )
    fast = sum(len(set(selector.select(r, NODES)) & set(NODES[:5])) for r in range(1, 31))
    assert fast / (30 * 5) > 0.7


def test_deadline_keeps_the_first_arrivals_and_records_time(make_reply) -> None:
    # Prepare: 6 replies finishing at 1..6 s; want 4, deadline 3.5 s.
    replies = [
        make_reply(1000 + i, {"x": np.zeros(1)}, metrics={"sim-seconds": float(i + 1)})
        for i in range(6)
    ]
    deadline = RoundDeadline(target=4, deadline_s=3.5)
    kept, stats = deadline.filter(1, replies)
    assert [m.metadata.src_node_id for m in kept] == [1000, 1001, 1002]
    assert stats == {"late": 3.0, "surplus": 0.0, "sim_round_s": 3.5, "sim_time_s": 3.5}
    # Without a deadline the round ends at the 4th arrival; the 2 others are surplus.
    relaxed = RoundDeadline(target=4)
    kept, stats = relaxed.filter(1, replies)
    assert len(kept) == 4 and stats["surplus"] == 2 and stats["sim_round_s"] == 4.0
    _, stats = relaxed.filter(2, replies[:2])
    assert stats["sim_time_s"] == 4.0 + 2.0  # the clock accumulates


def test_deadline_passes_untimed_replies_through(make_reply) -> None:
    replies = [make_reply(1000, {"x": np.zeros(1)})]
    assert RoundDeadline(target=1, deadline_s=1.0).filter(1, replies) == (replies, {})


@pytest.mark.parametrize(
    ("run_config", "message"),
    [
        ({"selection": "fastest"}, "random | device-aware | carbon-aware | battery-aware"),
        ({"min-per-group": -1}, "min-per-group"),
        ({"min-per-group": 1.5}, "min-per-group"),
        ({"over-select": -0.1}, "over-select"),
        ({"deadline-s": -5}, "deadline-s"),
        ({"min-battery": 1.5}, "min-battery"),
        ({"over-select": "lots"}, "must be a number"),
    ],
)
def test_bad_selection_settings_are_refused(run_config: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SelectionConfig.from_run_config(run_config)


def test_selection_settings_parse() -> None:
    cfg = SelectionConfig.from_run_config(
        {"selection": "device-aware", "over-select": 0.3, "deadline-s": 12, "min-battery": 0.1}
    )
    assert cfg == SelectionConfig("device-aware", 0.3, 12.0, 0.1)
    assert SelectionConfig.from_run_config({}).deadline_s is None
