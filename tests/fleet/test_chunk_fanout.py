"""FanoutPlanner: when gathered shared chunk requests are published (pure, injected clock)."""

from __future__ import annotations

import pytest

from fleet.ota.fanout import FanoutPlanner

T = "ab" * 32


def test_a_wave_is_published_once_when_every_device_sent_an_install_has_asked() -> None:
    # Prepare: three devices were sent the install.
    plan = FanoutPlanner(quiet_s=0.1, max_wait_s=1.0)
    for device in ("a", "b", "c"):
        plan.expect(T, device, now=0.0)

    # Execute: they ask one after another, 10 ms apart.
    plan.join(T, "a", (0, 1), now=0.00)
    early = plan.due(now=0.01)
    plan.join(T, "b", (0, 1), now=0.01)
    plan.join(T, "c", (1, 2), now=0.02)
    ready = plan.due(now=0.02)

    # Assert: nothing before the last one asked, then one publication of the union.
    assert early == []
    assert ready == [(T, [0, 1, 2])]
    assert plan.due(now=0.5) == [] and plan.waiting == 0


def test_quiet_and_max_wait_bound_the_delay_when_devices_stay_silent() -> None:
    plan = FanoutPlanner(quiet_s=0.1, max_wait_s=0.3)
    for device in ("a", "b"):
        plan.expect(T, device, now=0.0)
    plan.join(T, "a", (0,), now=0.0)
    assert plan.due(now=0.05) == []
    assert plan.next_due_in(now=0.05) == pytest.approx(0.05)
    assert plan.due(now=0.1) == [(T, [0])]  # b never asked: quiet period over
    # A steady trickle of joins is cut at max_wait_s.
    for i in range(5):
        plan.join(T, "a", (i,), now=1.0 + 0.06 * i)
    assert plan.due(now=1.25) == []
    assert plan.due(now=1.3) == [(T, [0, 1, 2, 3, 4])]


def test_finished_and_forgotten_devices_are_not_waited_for() -> None:
    plan = FanoutPlanner(quiet_s=0.1, max_wait_s=1.0, forget_s=10.0)
    plan.expect(T, "a", now=0.0)
    plan.expect(T, "b", now=0.0)
    plan.join(T, "a", (0,), now=0.0)
    assert plan.due(now=0.0) == []  # b may still ask
    plan.finished("b")  # b acked (e.g. it already had the bundle)
    assert plan.due(now=0.01) == [(T, [0])]  # before the quiet period
    plan.finished("a")
    plan.expect(T, "gone", now=1.0)
    plan.join(T, "c", (5,), now=20.0)
    assert plan.due(now=20.0) == [(T, [5])]  # "gone" was forgotten after 10 s


def test_settings_that_cannot_work_are_refused() -> None:
    with pytest.raises(ValueError, match="quiet_s"):
        FanoutPlanner(quiet_s=0.0)
    with pytest.raises(ValueError, match="quiet_s"):
        FanoutPlanner(quiet_s=2.0, max_wait_s=1.0)
    with pytest.raises(ValueError, match="forget_s"):
        FanoutPlanner(quiet_s=0.1, max_wait_s=1.0, forget_s=0.5)


def test_a_slowed_wave_is_not_split_by_pauses_while_most_have_not_asked() -> None:
    # Prepare: 20 devices were sent the install.
    plan = FanoutPlanner(quiet_s=0.1, max_wait_s=1.0, straggler_share=0.1)
    devices = [f"d{i}" for i in range(20)]
    for device in devices:
        plan.expect(T, device, now=0.0)

    # Execute: 5 ask, then a 0.3 s pause (a loaded host), then the other 15.
    for i, device in enumerate(devices[:5]):
        plan.join(T, device, (0, 1), now=0.01 * i)
    paused = plan.due(now=0.35)
    wake = plan.next_due_in(now=0.35)
    for device in devices[5:]:
        plan.join(T, device, (0, 1), now=0.4)
    ready = plan.due(now=0.4)

    # Assert: the pause published nothing (15 of 20 still to ask); one publication at last.
    assert paused == [] and wake == pytest.approx(0.65)
    assert ready == [(T, [0, 1])] and plan.waiting == 0


def test_a_pause_publishes_when_only_stragglers_are_missing() -> None:
    # 20 sent the install, 18 asked, 2 stay silent (offline): 2 <= 10 % of 20.
    plan = FanoutPlanner(quiet_s=0.1, max_wait_s=1.0, straggler_share=0.1)
    for i in range(20):
        plan.expect(T, f"d{i}", now=0.0)
    for i in range(18):
        plan.join(T, f"d{i}", (3,), now=0.0)
    assert plan.due(now=0.05) == []
    assert plan.due(now=0.1) == [(T, [3])]
    # A wave where most stay silent is still published max_wait_s after the first ask.
    plan = FanoutPlanner(quiet_s=0.1, max_wait_s=1.0, straggler_share=0.1)
    for i in range(20):
        plan.expect(T, f"d{i}", now=0.0)
    plan.join(T, "d0", (0,), now=0.0)
    assert plan.due(now=0.99) == []
    assert plan.due(now=1.0) == [(T, [0])]
    with pytest.raises(ValueError, match="straggler_share"):
        FanoutPlanner(straggler_share=1.5)
