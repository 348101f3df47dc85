"""What one device may cost the fleet's MQTT bridge: rates, queue room, poison accounting.

One device must never hurt the others (docs/mqtt.md, "Limits"). The bridge asks a
:class:`DeviceGuard` about every message before it queues it (in paho's callback, so each
check is a dictionary look-up and a little arithmetic under one lock):

- **rates**: a token bucket per (device, channel) — ``Rate.per_s`` messages a second on
  average, bursts of ``Rate.burst``; a message costs one token per started
  ``COST_BYTES`` (16 KiB) of payload, so the bytes a device may send are bounded too. A
  message over the rate is dropped and counted in ``throttled``; the device is flagged
  with a log line (at most one per device and channel every ``log_every_s``).
- **queue room**: at most ``pending_per_device`` chunk requests of one device, and
  ``pending_total`` of all devices, wait for the chunk server; at most
  ``ingest_pending_total`` messages wait for the ingester. Past that a message is dropped
  and counted in ``dropped`` — memory stays bounded whatever the devices send.
- **poison**: a message that does not decode, or that the database refuses, is dropped
  by the bridge and counted here per device in ``poison``, with one log line naming the
  device and topic (again at most one per device every ``log_every_s``).

The counters are the bridge's statistics (``FleetBridge.stats.guard``) and are read by
tests and benches; they hold one entry per device that misbehaved, no more.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

log = logging.getLogger(__name__)

CHUNKS = "chunk-req"
COST_BYTES = 16 * 1024  # a message costs one token per started 16 KiB of payload


@dataclass(frozen=True)
class Rate:
    """``per_s`` messages a second on average, bursts of ``burst`` messages."""

    per_s: float
    burst: int

    def __post_init__(self) -> None:
        if not self.per_s > 0 or self.burst < 1:
            raise ValueError(f"a rate needs per_s > 0 and burst >= 1, got {self}")


# A device sends a heartbeat every heartbeat_s (5-60 s), telemetry every telemetry_s
# (60 s), a chunk request per chunk received while downloading (a few hundred a second
# on a fast link); the bursts cover a reconnect that flushes what was queued meanwhile.
DEFAULT_RATES: Mapping[str, Rate] = MappingProxyType(
    {
        CHUNKS: Rate(per_s=200.0, burst=1000),
        "telemetry": Rate(per_s=1.0, burst=60),
        "feedback": Rate(per_s=1.0, burst=60),  # at most one per telemetry window
        "heartbeat": Rate(per_s=1.0, burst=30),
        "status": Rate(per_s=1.0, burst=30),
        "ack": Rate(per_s=20.0, burst=200),
    }
)


@dataclass(frozen=True)
class Limits:
    """The bridge's per-device limits (see the module docstring); ``rates`` by channel."""

    rates: Mapping[str, Rate] = field(default_factory=lambda: DEFAULT_RATES)
    pending_per_device: int = 256
    pending_total: int = 50_000
    ingest_pending_total: int = 200_000
    log_every_s: float = 60.0

    def __post_init__(self) -> None:
        if min(self.pending_per_device, self.pending_total, self.ingest_pending_total) < 1:
            raise ValueError("the bridge's queue limits must be at least 1 message")
        if self.log_every_s <= 0:
            raise ValueError("log_every_s must be positive seconds")


@dataclass
class _Bucket:
    tokens: float
    at: float


class DeviceGuard:
    """Rate limits, queue room and poison counts of every device; thread-safe."""

    def __init__(self, limits: Limits, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._pending: Counter[str] = Counter()  # chunk requests waiting, by device
        self._pending_total = 0
        self._ingest_pending = 0
        self._logged: dict[tuple[str, str], tuple[float, int]] = {}
        self.throttled: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        self.poison: Counter[str] = Counter()
        self.version_refused: Counter[str] = Counter()  # protocol v1 messages refused

    # --- before queueing (paho's callback) -------------------------------------------

    def admit(self, device_id: str, channel: str, *, size: int = 0) -> bool:
        """Whether a message of ``size`` bytes from ``device_id`` on ``channel`` may be
        queued; counts it as pending when it may (call :meth:`taken` when it leaves)."""
        now = self._clock()
        cost = 1 + max(0, size - 1) // COST_BYTES
        with self._lock:
            if not self._within_rate(device_id, channel, now, cost):
                self.throttled[device_id] += 1
                self._flag(device_id, f"rate:{channel}", now)
                return False
            if channel == CHUNKS:
                if (
                    self._pending[device_id] >= self.limits.pending_per_device
                    or self._pending_total >= self.limits.pending_total
                ):
                    self.dropped[device_id] += 1
                    self._flag(device_id, "full:chunks", now)
                    return False
                self._pending[device_id] += 1
                self._pending_total += 1
            else:
                if self._ingest_pending >= self.limits.ingest_pending_total:
                    self.dropped[device_id] += 1
                    self._flag(device_id, "full:ingest", now)
                    return False
                self._ingest_pending += 1
            return True

    def taken(self, device_id: str, channel: str) -> None:
        """A message :meth:`admit` let in left its queue."""
        with self._lock:
            if channel == CHUNKS:
                left = self._pending[device_id] - 1
                if left > 0:
                    self._pending[device_id] = left
                else:
                    del self._pending[device_id]
                self._pending_total -= 1
            else:
                self._ingest_pending -= 1

    def _within_rate(self, device_id: str, channel: str, now: float, cost: int) -> bool:
        rate = self.limits.rates.get(channel)
        if rate is None:
            return True
        bucket = self._buckets.get((device_id, channel))
        if bucket is None:
            bucket = self._buckets[(device_id, channel)] = _Bucket(tokens=rate.burst, at=now)
        bucket.tokens = min(rate.burst, bucket.tokens + (now - bucket.at) * rate.per_s)
        bucket.at = now
        if bucket.tokens < cost:
            return False
        bucket.tokens -= cost
        return True

    # --- after decoding (bridge threads) ---------------------------------------------

    def poisoned(self, device_id: str, topic: str, reason: str) -> None:
        """A message of ``device_id`` was dropped as malformed or refused; count and log."""
        with self._lock:
            self.poison[device_id] += 1
            self._flag(device_id, "poison", self._clock(), detail=f"on {topic}: {reason}")

    def refused_version(self, device_id: str, topic: str, reason: str) -> None:
        """A message of ``device_id`` in a protocol version this fleet no longer accepts
        was dropped; count it and log one line naming the device and the version."""
        with self._lock:
            self.version_refused[device_id] += 1
            self._flag(device_id, "version", self._clock(), detail=f"on {topic}: {reason}")

    @property
    def pending(self) -> tuple[int, int]:
        """Chunk requests and device messages waiting now (admitted, not yet taken)."""
        with self._lock:
            return self._pending_total, self._ingest_pending

    def _flag(self, device_id: str, what: str, now: float, *, detail: str = "") -> None:
        """One log line per device and ``what`` every ``log_every_s`` (lock held)."""
        key = (device_id, what)
        last = self._logged.get(key)
        if last is not None and now - last[0] < self.limits.log_every_s:
            self._logged[key] = (last[0], last[1] + 1)
            return
        self._logged[key] = (now, 0)
        more = f" ({last[1]} more since the last report)" if last and last[1] else ""
        kind, _, channel = what.partition(":")
        if kind == "rate":
            rate = self.limits.rates[channel]
            log.warning(
                "device %s exceeds its %s rate (%g/s, bursts of %d): excess dropped%s",
                device_id,
                channel,
                rate.per_s,
                rate.burst,
                more,
            )
        elif kind == "full":
            log.warning(
                "device %s: the bridge's %s queue is full; message dropped%s",
                device_id,
                channel,
                more,
            )
        elif kind == "version":
            log.warning("device %s: message refused %s%s", device_id, detail[:300], more)
        else:
            log.warning("device %s: poison message dropped %s%s", device_id, detail[:300], more)
