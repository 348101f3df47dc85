"""Device profiles: how fast a simulated client computes, talks and stays online.

One TOML file per profile in this folder (``jetson-orin``, ``rpi5``, ``rpi4``,
``cpu-x86``, ``phone-like``), looked up by name in one registry that refuses
duplicates. A profile gives

- compute: seconds to train one example for one epoch, per task (and a default), a
  fixed overhead per instruction, and the spread (log-normal sigma) of a round's
  compute time;
- network: downlink and uplink bandwidth (Mbit/s) and one-way latency (ms);
- availability: the probability of being online for each hour of the local day;
- reliability: the probability of dropping out during an instruction;
- power (optional ``[power]``): watts while training (``train-w``) and while idle or
  transferring (``idle-w``), battery capacity in Wh (``battery-wh``, 0 = mains
  powered), and a default grid ``region`` for carbon accounting (``simulation.carbon``).
  Profiles without it still load; carbon accounting then asks for it.
- battery (optional ``[battery]``): capacity, start level, charging schedule and the
  owner's own draw (:mod:`simulation.battery`); needs ``[power]`` watts.

:func:`client_duration_s` is the one timing model: the seconds a device needs to
download an instruction, compute and upload its reply. The simulator stamps it on
replies; selectors and asynchronous strategies may call it directly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import tomllib

from simulation.battery import BatterySpec

PROFILE_DIR = Path(__file__).parent
REFERENCE_PROFILE = "cpu-x86"  # relative speeds are measured against this profile

MessageKind = Literal["train", "evaluate"]
# A forward pass costs about a third of a training step (forward + backward + update).
EVALUATE_COST_FRACTION = 1.0 / 3.0


@dataclass(frozen=True)
class DeviceProfile:
    """A class of device. Times in seconds, bandwidth in Mbit/s, latency in ms."""

    name: str
    description: str
    seconds_per_example: Mapping[str, float]
    default_seconds_per_example: float
    overhead_s: float
    jitter: float
    downlink_mbps: float
    uplink_mbps: float
    latency_ms: float
    hourly_availability: tuple[float, ...]
    dropout: float
    train_w: float | None = None
    idle_w: float | None = None
    battery_wh: float = 0.0
    region: str | None = None
    battery: BatterySpec | None = None
    source: Path | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        where = f"device profile {self.name!r}" + (f" ({self.source})" if self.source else "")
        positive = {
            "default-seconds-per-example": self.default_seconds_per_example,
            "downlink-mbps": self.downlink_mbps,
            "uplink-mbps": self.uplink_mbps,
            **{f"seconds-per-example.{k}": v for k, v in self.seconds_per_example.items()},
        }
        for key, value in positive.items():
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{where}: {key} must be a positive number, got {value!r}")
        for key, value in (
            ("overhead-s", self.overhead_s),
            ("latency-ms", self.latency_ms),
            ("jitter", self.jitter),
        ):
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"{where}: {key} must be >= 0, got {value!r}")
        if len(self.hourly_availability) != 24:
            raise ValueError(f"{where}: availability.hourly needs 24 values (00:00 .. 23:00)")
        for key, watts in (("power.train-w", self.train_w), ("power.idle-w", self.idle_w)):
            if watts is not None and not (watts >= 0 and math.isfinite(watts)):
                raise ValueError(f"{where}: {key} must be a number of watts >= 0, got {watts!r}")
        if not (self.battery_wh >= 0 and math.isfinite(self.battery_wh)):
            raise ValueError(f"{where}: power.battery-wh must be >= 0 (0 = mains powered)")
        if self.battery is not None and (self.train_w is None or self.idle_w is None):
            raise ValueError(f"{where}: [battery] needs [power] train-w and idle-w (its drain)")
        for p in (*self.hourly_availability, self.dropout):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{where}: probabilities must lie in [0, 1], got {p!r}")

    def seconds_per_example_for(self, task: str) -> float:
        """Training seconds per example and epoch for ``task`` (default if not listed)."""
        return float(self.seconds_per_example.get(task, self.default_seconds_per_example))

    def availability_at(self, hour_of_day: float) -> float:
        """Probability of being online at ``hour_of_day`` (0 <= h < 24, wraps)."""
        return self.hourly_availability[math.floor(hour_of_day) % 24]

    @classmethod
    def from_toml(cls, path: Path) -> DeviceProfile:
        """Read one profile file; errors name the file and the key to fix."""
        try:
            raw = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"device profile {path} is not valid TOML: {exc}") from None
        try:
            compute, network = raw["compute"], raw["network"]
            return cls(
                name=str(raw["name"]),
                description=str(raw.get("description", "")),
                seconds_per_example={
                    str(k): float(v) for k, v in compute.get("seconds-per-example", {}).items()
                },
                default_seconds_per_example=float(compute["default-seconds-per-example"]),
                overhead_s=float(compute.get("overhead-s", 0.0)),
                jitter=float(compute.get("jitter", 0.0)),
                downlink_mbps=float(network["downlink-mbps"]),
                uplink_mbps=float(network["uplink-mbps"]),
                latency_ms=float(network.get("latency-ms", 0.0)),
                hourly_availability=tuple(float(p) for p in raw["availability"]["hourly"]),
                dropout=float(raw.get("reliability", {}).get("dropout", 0.0)),
                train_w=_watts(raw.get("power", {}), "train-w"),
                idle_w=_watts(raw.get("power", {}), "idle-w"),
                battery_wh=float(raw.get("power", {}).get("battery-wh", 0.0)),
                region=_region(raw.get("power", {})),
                battery=_battery(raw),
                source=path,
            )
        except KeyError as exc:
            raise ValueError(f"device profile {path} lacks the key {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise ValueError(f"device profile {path}: {exc}") from None


def _watts(power: Mapping[str, Any], key: str) -> float | None:
    """An optional ``[power]`` wattage."""
    value = power.get(key)
    return None if value is None else float(value)


def _battery(raw: Mapping[str, Any]) -> BatterySpec | None:
    """The optional ``[battery]`` model (capacity defaults to ``[power] battery-wh``)."""
    table = raw.get("battery")
    if table is None:
        return None
    if not isinstance(table, dict):
        raise ValueError("[battery] must be a table")
    default = float(raw.get("power", {}).get("battery-wh", 0.0))
    return BatterySpec.from_table(table, default_capacity_wh=default)


def _region(power: Mapping[str, Any]) -> str | None:
    """The optional ``[power] region``."""
    value = power.get("region")
    return None if value is None else str(value)


_PROFILES: dict[str, DeviceProfile] = {}


def register_profile(profile: DeviceProfile) -> DeviceProfile:
    """Add ``profile`` to the registry; a second profile with the same name is refused."""
    if profile.name in _PROFILES:
        raise ValueError(f"device profile {profile.name!r} is already registered")
    _PROFILES[profile.name] = profile
    return profile


@lru_cache(maxsize=1)
def _load_builtin() -> None:
    for path in sorted(PROFILE_DIR.glob("*.toml")):
        profile = DeviceProfile.from_toml(path)
        if profile.name != path.stem:
            raise ValueError(f"device profile {path}: name {profile.name!r} must match the file")
        register_profile(profile)


def available_profiles() -> list[str]:
    """Names of every registered device profile, sorted."""
    _load_builtin()
    return sorted(_PROFILES)


def get_profile(name: str) -> DeviceProfile:
    """Look a profile up by name; the error lists the valid names."""
    _load_builtin()
    try:
        return _PROFILES[name]
    except KeyError:
        raise ValueError(
            f"unknown device profile {name!r}; choose from: {', '.join(available_profiles())}"
        ) from None


def relative_speed(profile: DeviceProfile, task: str) -> float:
    """Training speed on ``task`` relative to the reference device (2.0 = twice as fast)."""
    reference = get_profile(REFERENCE_PROFILE).seconds_per_example_for(task)
    return reference / profile.seconds_per_example_for(task)


@dataclass(frozen=True)
class ClientTiming:
    """Where an instruction's seconds go: ``compute_s`` (overhead + training or
    evaluation) and ``transfer_s`` (latency both ways, download and upload)."""

    compute_s: float
    transfer_s: float

    @property
    def total_s(self) -> float:
        return self.transfer_s + self.compute_s


def client_timing(
    profile: DeviceProfile,
    *,
    task: str,
    num_examples: int,
    model_bytes: int,
    upload_bytes: int | None = None,
    epochs: int = 1,
    kind: MessageKind = "train",
    slowdown: float = 1.0,
) -> ClientTiming:
    """The parts of :func:`client_duration_s` (same arguments)."""
    if num_examples < 0 or model_bytes < 0 or epochs < 0:
        raise ValueError("num_examples, model_bytes and epochs must be >= 0")
    up = model_bytes if upload_bytes is None else upload_bytes
    per_example = profile.seconds_per_example_for(task)
    work = num_examples * (epochs if kind == "train" else EVALUATE_COST_FRACTION)
    latency = profile.latency_ms / 1000.0
    download = model_bytes * 8 / (profile.downlink_mbps * 1e6)
    upload = up * 8 / (profile.uplink_mbps * 1e6)
    compute = profile.overhead_s + per_example * work * slowdown
    return ClientTiming(compute_s=compute, transfer_s=latency + download + latency + upload)


def client_duration_s(
    profile: DeviceProfile,
    *,
    task: str,
    num_examples: int,
    model_bytes: int,
    upload_bytes: int | None = None,
    epochs: int = 1,
    kind: MessageKind = "train",
    slowdown: float = 1.0,
) -> float:
    """Seconds from sending an instruction to receiving the reply, on ``profile``.

    latency + download(``model_bytes``) + overhead + compute + latency +
    upload(``upload_bytes``, default ``model_bytes``). Compute is
    ``seconds-per-example × num_examples × epochs × slowdown`` for training and a
    third of one epoch for evaluation (a forward pass only). ``slowdown`` is the
    round's random compute factor (1.0 = nominal; see :func:`draw_slowdown`).
    """
    timing = client_timing(
        profile,
        task=task,
        num_examples=num_examples,
        model_bytes=model_bytes,
        upload_bytes=upload_bytes,
        epochs=epochs,
        kind=kind,
        slowdown=slowdown,
    )
    return timing.transfer_s + timing.compute_s


def client_energy_kwh(profile: DeviceProfile, timing: ClientTiming) -> float:
    """kWh a device spends on one instruction: ``train-w`` × compute seconds +
    ``idle-w`` × transfer seconds (the radio's extra draw is within idle power).

    Raises:
        ValueError: the profile has no ``[power]`` watts.
    """
    if profile.train_w is None or profile.idle_w is None:
        raise ValueError(
            f"device profile {profile.name!r} has no [power] train-w and idle-w; "
            "add them to its TOML to account energy and CO2"
        )
    joules = profile.train_w * timing.compute_s + profile.idle_w * timing.transfer_s
    return joules / 3.6e6


def draw_slowdown(profile: DeviceProfile, rng: np.random.Generator) -> float:
    """A log-normal compute factor with median 1 and the profile's ``jitter`` sigma."""
    return float(np.exp(rng.normal(0.0, profile.jitter))) if profile.jitter > 0 else 1.0


DeviceMix = tuple[tuple[str, float], ...]


def parse_device_mix(text: str) -> DeviceMix:
    """Parse ``--devices``: ``NAME=FRACTION,...`` with fractions summing to 1.

    A single name without a fraction means every client is that device.
    """
    hint = "use e.g. --devices jetson-orin=0.2,rpi5=0.5,cpu-x86=0.3"
    items = [part.strip() for part in text.split(",") if part.strip()]
    if not items:
        raise ValueError(f"--devices is empty; {hint}")
    if len(items) == 1 and "=" not in items[0]:
        get_profile(items[0])
        return ((items[0], 1.0),)
    mix: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep:
            raise ValueError(f"--devices item {item!r} has no fraction; {hint}")
        get_profile(name)
        if name in mix:
            raise ValueError(f"--devices names {name!r} twice; {hint}")
        try:
            fraction = float(value)
        except ValueError:
            raise ValueError(f"--devices {name}={value!r}: the fraction must be a number") from None
        if not (0.0 < fraction <= 1.0):
            raise ValueError(f"--devices {name}={value}: the fraction must be in (0, 1]")
        mix[name] = fraction
    total = sum(mix.values())
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"--devices fractions sum to {total:g}, not 1; {hint}")
    return tuple(mix.items())


def assign_devices(num_clients: int, mix: DeviceMix, *, seed: int) -> list[str]:
    """Each client's profile name: exact shares (largest remainder), shuffled by ``seed``."""
    if num_clients < 1:
        raise ValueError("num_clients must be >= 1")
    quotas = [fraction * num_clients for _, fraction in mix]
    counts = [math.floor(q) for q in quotas]
    by_remainder = sorted(range(len(mix)), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in by_remainder[: num_clients - sum(counts)]:
        counts[i] += 1
    names = [name for (name, _), count in zip(mix, counts, strict=True) for _ in range(count)]
    order = np.random.default_rng([seed, 0xDE7]).permutation(num_clients)
    return [names[i] for i in order]


def describe(mix: DeviceMix) -> str:
    """The canonical ``--devices`` text of ``mix``."""
    return ",".join(f"{name}={fraction:g}" for name, fraction in mix)
