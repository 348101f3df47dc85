"""The bridge never has more QoS 1 messages pending than paho has packet ids.

paho 2.x numbers pending publishes with 16-bit ids and keys them by id: a 65,536th pending
message silently replaced the first (a 100,000-device wave reached exactly 65,535 devices).
"""

from __future__ import annotations

import collections
import threading
from types import SimpleNamespace

import paho.mqtt.client as mqtt
import pytest

from fleet.ota import bridge as bridge_module
from fleet.ota.bridge import FleetBridge


class _Info:
    def __init__(self) -> None:
        self.acked = False

    def is_published(self) -> bool:
        return self.acked


class _Client:
    """Unit-test stand-in for paho: records publishes; the test acknowledges them."""

    def __init__(self) -> None:
        self.sent: list[_Info] = []

    def publish(self, topic: str, frame: bytes, qos: int) -> _Info:
        info = _Info()
        self.sent.append(info)
        return info


def _bridge(client: _Client) -> SimpleNamespace:
    return SimpleNamespace(
        client=client,
        _unacked=collections.deque(),
        _unacked_lock=threading.Lock(),
        _stop=threading.Event(),
    )


def test_the_window_is_below_pahos_packet_ids() -> None:
    # Assert: paho wraps its message ids at 65,536; the window stays well below.
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client._last_mid = 65534  # type: ignore[attr-defined]
    assert [client._mid_generate() for _ in range(2)] == [65535, 1]  # type: ignore[attr-defined]
    assert bridge_module.MAX_UNACKED < 65535


def test_publishing_past_the_window_waits_for_the_oldest_ack(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Arrange: a window of 4.
    monkeypatch.setattr(bridge_module, "MAX_UNACKED", 4)
    client = _Client()
    fake = _bridge(client)
    for _ in range(4):
        FleetBridge._publish(fake, "t", b"x")  # type: ignore[arg-type]
    # Execute: the fifth publish must wait until the broker acknowledged the oldest.
    done = threading.Event()
    worker = threading.Thread(
        target=lambda: (FleetBridge._publish(fake, "t", b"x"), done.set())  # type: ignore[arg-type, func-returns-value]
    )
    worker.start()
    assert not done.wait(0.3), "published a fifth message with four unacknowledged"
    assert len(client.sent) == 4
    client.sent[0].acked = True
    # Assert: it goes out once the oldest is acknowledged, and the window is 4 again.
    assert done.wait(5.0)
    worker.join()
    assert len(client.sent) == 5
    assert len(fake._unacked) == 4


def test_a_stopping_bridge_does_not_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bridge_module, "MAX_UNACKED", 1)
    client = _Client()
    fake = _bridge(client)
    FleetBridge._publish(fake, "t", b"x")  # type: ignore[arg-type]
    fake._stop.set()
    FleetBridge._publish(fake, "t", b"x")  # type: ignore[arg-type]
    assert len(client.sent) == 2
