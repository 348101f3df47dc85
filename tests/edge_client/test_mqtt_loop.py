"""SharedLoop drives hundreds of paho clients from one thread, past select()'s 1024-fd limit,
and reconnects them after the broker restarts (real Mosquitto)."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

# The test broker (tests/e2e/broker_process.py) lives with the end-to-end helpers.
sys.path.insert(0, str(Path(__file__).parents[1] / "e2e"))

from broker_process import MosquittoProcess

from edge_client.mqtt_loop import SharedLoop

pytestmark = [pytest.mark.slow]
CLIENTS = 400  # 3 file descriptors each: well past what select.select() can watch


@pytest.fixture
def broker() -> Iterator[MosquittoProcess]:
    with MosquittoProcess() as process:
        yield process


def _wait(predicate: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_hundreds_of_clients_on_one_thread_receive_and_survive_a_broker_restart(
    broker: MosquittoProcess,
) -> None:
    # Prepare
    loop = SharedLoop().start()
    lock = threading.Lock()
    received: set[int] = set()
    subscribed: set[int] = set()
    clients = []
    for i in range(CLIENTS):
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"loop-{i}", userdata=i)
        client.on_connect = lambda c, u, *_: c.subscribe("bench/all", 1)

        def on_subscribe(_c: mqtt.Client, u: int, *_: object) -> None:
            with lock:
                subscribed.add(u)

        def on_message(_c: mqtt.Client, u: int, _m: mqtt.MQTTMessage) -> None:
            with lock:
                received.add(u)

        client.on_subscribe = on_subscribe
        client.on_message = on_message
        loop.add(client, host="127.0.0.1", port=broker.port, keepalive=30)
        clients.append(client)
    publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="publisher")
    try:
        assert _wait(lambda: len(subscribed) == CLIENTS, 60), len(subscribed)
        # Execute: the broker restarts; everyone must come back and get a message.
        subscribed.clear()
        broker.restart(down_s=0.5)
        assert _wait(lambda: len(subscribed) == CLIENTS, 60), len(subscribed)
        publisher.connect("127.0.0.1", broker.port)
        publisher.loop_start()
        publisher.publish("bench/all", b"hello", qos=1).wait_for_publish(10)
        # Assert
        assert _wait(lambda: len(received) == CLIENTS, 60), len(received)
    finally:
        publisher.loop_stop()
        for client in clients:
            loop.remove(client)
            client.disconnect()
        loop.stop()
