"""``enroll_devices_over_api``: devices enrolled before a failure keep their credentials
(the fleet shows a broker password once), in order. A unit test with a fake client; the
real API path is ``tests/fleet/test_rollout_cli.py``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from fleet.client import FleetError
from simulation.fleet_devices import SimDevice, enroll_devices_over_api


@dataclass
class _Answer:
    device: Any
    mqtt: Any


@dataclass
class _Ref:
    id: str
    password: str = ""


class _FailingFleet:
    """Enrols ``ok`` devices, then refuses like an unreachable fleet."""

    def __init__(self, ok: int) -> None:
        self.ok = ok
        self.groups: list[str] = []
        self.names: list[str] = []

    def ensure_group(self, name: str) -> None:
        self.groups.append(name)

    def enroll_device(self, *, name: str, hardware_target: str, group: str) -> _Answer:
        if len(self.names) == self.ok:
            raise FleetError("cannot reach the fleet")
        self.names.append(name)
        n = len(self.names)
        return _Answer(device=_Ref(id=f"dev-{n}"), mqtt=_Ref(id="", password=f"pw-{n}"))


def test_devices_enrolled_before_a_failure_are_kept() -> None:
    fleet = _FailingFleet(ok=2)
    kept: list[SimDevice] = []

    with pytest.raises(FleetError, match="cannot reach"):
        enroll_devices_over_api(fleet, count=5, group="g", target="cpu-x86", into=kept)

    assert fleet.groups == ["g"]
    assert kept == [SimDevice("dev-1", "pw-1"), SimDevice("dev-2", "pw-2")]
    assert len(set(fleet.names)) == 2


def test_all_enrolled_when_the_fleet_answers() -> None:
    got = enroll_devices_over_api(_FailingFleet(ok=3), count=3, group="g", target="cpu-x86")
    assert [d.device_id for d in got] == ["dev-1", "dev-2", "dev-3"]
    with pytest.raises(ValueError, match="at least 1"):
        enroll_devices_over_api(_FailingFleet(ok=1), count=0, group="g", target="cpu-x86")
