"""Broker credentials follow the fleet (issue 22): the README's order — broker-config,
Mosquitto, ``fleet mqtt`` — then a device enrolled through the API afterwards connects
within seconds, with no manual step; a rotated password and a retired device are refused,
and the retired device's live session is ended.

Real processes throughout: ``fedfleet fleet serve``, ``fedfleet fleet broker-config``,
Mosquitto running the generated ``mosquitto.conf``, ``fedfleet fleet mqtt``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from broker_process import MosquittoProcess, free_port
from fleet_server import create_token, fleet_fixtures

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

FEDFLEET = str(Path(sys.executable).parent / "fedfleet")


class Session:
    """One MQTT connection attempt; remembers whether it was accepted and when it ended."""

    def __init__(self, port: int, user: str, password: str) -> None:
        self.answered = threading.Event()
        self.accepted = False
        self.ended = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"{user}-{uuid.uuid4().hex[:6]}"
        )
        self.client.username_pw_set(user, password)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *_: self.ended.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_connect(self, _c: object, _u: object, _f: object, reason: Any, _p: object) -> None:
        if not self.answered.is_set():
            self.accepted = not reason.is_failure
            self.answered.set()

    def close(self) -> None:
        self.client.disconnect()  # before loop_stop(): no wait for the loop's 1 s select
        self.client.loop_stop()


def connect(port: int, user: str, password: str) -> Session:
    """One attempt: the session, once the broker answered (accepted or refused)."""
    session = Session(port, user, password)
    if not session.answered.wait(5):
        session.close()
        pytest.fail(f"the broker did not answer {user}'s CONNECT within 5 s")
    return session


def accepted_within(port: int, user: str, password: str, timeout_s: float) -> Session | None:
    """Retry, as a device agent does, until accepted; the open session, or None."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        session = connect(port, user, password)
        if session.accepted:
            return session
        session.close()
        time.sleep(0.2)
    return None


def refused(port: int, user: str, password: str) -> bool:
    session = connect(port, user, password)
    session.close()
    return not session.accepted


def _wait_for_line(
    path: Path, text: str, process: subprocess.Popen[bytes], timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if text in path.read_text():
            return
        if process.poll() is not None:
            pytest.fail(f"fleet mqtt exited: {path.read_text()[-2000:]}")
        time.sleep(0.1)
    pytest.fail(f"fleet mqtt never said {text!r}: {path.read_text()[-2000:]}")


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """fleet serve + broker-config + Mosquitto (the generated config) + fleet mqtt."""
    # Mosquitto drops to the 'mosquitto' user: its files live in a folder that user reads.
    folder = Path(tempfile.mkdtemp(prefix="fedfleet-brokercreds-"))
    os.chmod(folder, 0o755)
    mqtt_log = tmp_path / "fleet-mqtt.log"
    with fleet_fixtures().running_server(tmp_path / "fleet-data") as server:
        env = {
            **os.environ,
            "FEDFLEET_FLEET_DATA_DIR": str(server.data_dir),
            # broker-config and fleet mqtt are server-side: they name the database
            "FEDFLEET_FLEET_DATABASE_URL": server.database_url,
        }
        port = free_port()
        written = subprocess.run(
            [FEDFLEET, "fleet", "broker-config", "--out", str(folder), "--port", str(port)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert written.returncode == 0, written.stderr
        assert "for 0 devices" in written.stdout
        broker = MosquittoProcess(config=folder / "mosquitto.conf", port=port)
        service: subprocess.Popen[bytes] | None = None
        try:
            broker.start()
            with open(mqtt_log, "wb") as log:
                service = subprocess.Popen(
                    [
                        FEDFLEET,
                        "fleet",
                        "mqtt",
                        "--broker-port",
                        str(port),
                        "--password-file",
                        str(folder / "fleet.pass"),
                        "--broker-pid",
                        str(broker.pid),
                    ],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            _wait_for_line(mqtt_log, "broker credentials reloaded: 0 devices", service, 120)
            token = create_token(server, "admin", cwd=tmp_path)
            api = httpx.Client(
                base_url=f"{server.base_url}/api/v1",
                headers={"Authorization": f"Bearer {token}"},
                timeout=30,
            )
            yield {"api": api, "port": port, "log": mqtt_log, "broker": broker}
            api.close()
        finally:
            if service is not None:
                service.terminate()
                try:
                    service.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    service.kill()
                    service.wait()
            broker.close()
            shutil.rmtree(folder, ignore_errors=True)


def test_a_device_enrolled_after_the_broker_started_gets_in_and_retired_is_kicked_out(
    stack: dict[str, Any],
) -> None:
    api, port = stack["api"], stack["port"]

    # Execute: enroll through the API, long after the broker and fleet mqtt started.
    enrolled = api.post("/devices", json={"name": "late-pi", "hardware_target": "rpi5"})
    assert enrolled.status_code == 201, enrolled.text
    device_id = enrolled.json()["mqtt"]["username"]
    first_password = enrolled.json()["mqtt"]["password"]
    started = time.monotonic()
    session = accepted_within(port, device_id, first_password, timeout_s=10)

    # Assert: accepted within seconds (1 s credentials check + reload), nothing done by hand.
    assert session is not None, stack["log"].read_text()
    assert time.monotonic() - started < 10
    session.close()

    # Execute: rotate the password; the new one gets in, the old one is refused.
    rotated = api.post(f"/devices/{device_id}/credentials")
    assert rotated.status_code == 200, rotated.text
    new_password = rotated.json()["password"]
    live = accepted_within(port, device_id, new_password, timeout_s=10)
    assert live is not None
    assert refused(port, device_id, first_password)

    # Execute: retire the device while its session is open.
    retired = api.post(f"/devices/{device_id}/retire")
    assert retired.status_code == 200, retired.text

    # Assert: the broker ends the live session at its reload and refuses the next connect.
    try:
        assert live.ended.wait(10), "the retired device's session was not ended"
    finally:
        live.close()
    assert refused(port, device_id, new_password)
    log = stack["log"].read_text()
    assert "broker credentials reloaded: 1 devices" in log
    assert "broker credentials reloaded: 0 devices" in log.split("1 devices")[-1]
    assert "not reloaded" not in log, log  # no failed reload along the way
