"""Per-device limits of the MQTT bridge (fleet/ota/guard.py): token buckets, queue room,
rate-limited flags. Pure bookkeeping with an injected clock."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.ota.guard import CHUNKS, DeviceGuard, Limits, Rate


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_device_gets_its_burst_then_its_rate_and_others_keep_theirs() -> None:
    # Prepare
    clock = Clock()
    guard = DeviceGuard(Limits(rates={"telemetry": Rate(per_s=2.0, burst=5)}), clock=clock)

    # Execute: 20 messages at once, then 1 s later 20 more; b sends one.
    first = sum(guard.admit("a", "telemetry") for _ in range(20))
    clock.now = 1.0
    second = sum(guard.admit("a", "telemetry") for _ in range(20))
    other = guard.admit("b", "telemetry")

    # Assert
    assert (first, second, other) == (5, 2, True)
    assert guard.throttled == {"a": 33}


def test_chunk_requests_waiting_are_capped_per_device_and_in_total() -> None:
    guard = DeviceGuard(Limits(rates={}, pending_per_device=3, pending_total=5))
    a = [guard.admit("a", CHUNKS) for _ in range(4)]
    b = [guard.admit("b", CHUNKS) for _ in range(3)]
    assert a == [True, True, True, False] and b == [True, True, False]
    assert guard.pending == (5, 0) and guard.dropped == {"a": 1, "b": 1}
    guard.taken("a", CHUNKS)
    assert guard.admit("b", CHUNKS) and guard.pending == (5, 0)


def test_flags_are_one_log_line_per_device_and_interval(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    guard = DeviceGuard(Limits(rates={}, log_every_s=60.0), clock=clock)
    with caplog.at_level(logging.WARNING, logger="fleet.ota.guard"):
        for _ in range(100):
            guard.poisoned("a", "fedfleet/v1/dev/a/heartbeat", "malformed JSON")
        clock.now = 61.0
        guard.poisoned("a", "fedfleet/v1/dev/a/heartbeat", "malformed JSON")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and all(line.startswith("device a: poison") for line in lines)
    assert "99 more since the last report" in lines[1]
    assert guard.poison == {"a": 101}


@settings(max_examples=200, deadline=None)
@given(
    st.floats(min_value=0.1, max_value=100.0),
    st.integers(min_value=1, max_value=50),
    st.lists(st.floats(min_value=0.0, max_value=5.0), min_size=1, max_size=300),
)
def test_no_device_ever_gets_more_than_its_burst_plus_rate_times_time(
    per_s: float, burst: int, gaps: list[float]
) -> None:
    clock = Clock()
    guard = DeviceGuard(Limits(rates={"heartbeat": Rate(per_s=per_s, burst=burst)}), clock=clock)
    admitted = 0
    for gap in gaps:
        clock.now += gap
        admitted += guard.admit("a", "heartbeat")
    assert admitted <= burst + per_s * clock.now + 1e-9


def test_limits_refuse_impossible_values() -> None:
    with pytest.raises(ValueError, match="per_s > 0"):
        Rate(per_s=0, burst=1)
    with pytest.raises(ValueError, match="at least 1"):
        Limits(pending_total=0)


def test_large_messages_cost_one_token_per_started_16_kib() -> None:
    clock = Clock()
    guard = DeviceGuard(Limits(rates={"heartbeat": Rate(per_s=1.0, burst=30)}), clock=clock)
    # A 300 KB message costs 19 tokens: one passes a full bucket, the second does not.
    assert guard.admit("a", "heartbeat", size=300_000)
    assert not guard.admit("a", "heartbeat", size=300_000)
    # Small messages still cost one token each: the 11 left pass, then none.
    assert sum(guard.admit("a", "heartbeat", size=200) for _ in range(20)) == 11
