"""When to publish a bundle's chunks once on the shared artifact topic (fan-out planning).

A wave of a rollout sends the same install to hundreds of devices at once. Serving every
device its own copy of every chunk makes the fleet publish N x size bytes; instead each
device subscribes to ``fedfleet/v1/artifacts/<sha256>/chunk`` and asks for its next
window of chunks with ``via="artifact"``, and the fleet publishes the union of what was
asked **once** on that topic. The broker does the fan-out, as it does for
``mosquitto_pub`` to N ``mosquitto_sub``.

Correctness does not depend on this plan: every frame on the shared topic is checked by
the device against the chunk hashes of its own install command, and a chunk a device
misses (it joined late, it dropped frames to stay within its memory bound, the link
broke) is asked for again on its own topic (the repair path). The plan only decides
*when* to publish, trading a short gathering delay for fewer copies:

- a gather starts with the first request of a transfer and collects the indices
  asked for by every device that joins it;
- it is published when every device known to be fetching that transfer (sent an install
  for it, or asked for it, and not finished) is waiting in it, or when no device joined
  for ``quiet_s`` — only once at most ``straggler_share`` of them (at least one) were
  sent the install and have not asked yet — or ``max_wait_s`` after it started;
- a device leaves the fetching set when it acknowledges its install (or after
  ``forget_s`` without a request, e.g. it went offline).

The quiet rule alone split a wave whose devices were slowed down (a loaded host: 1,000
requests spread over 1.6 s with pauses over 0.1 s) into four publications, and every
publication reaches every device still subscribed — four times the bytes to receive and
drop. While most devices of a wave that were sent the install have not asked yet, a
pause means they are slow, not gone: only ``max_wait_s`` cuts the wait.

Each publication reaches every device subscribed at that moment, so the bytes the
broker sends are at most (publications x subscribers x chunk) and, for devices moving
in step (a wave), one copy of each chunk per device — the raw fan-out.

Pure bookkeeping with an injected clock (``now`` in seconds); the bridge calls it from
one thread under its own lock.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class _Gather:
    """Indices asked for a transfer since its last publication, and by whom."""

    first_at: float
    last_at: float
    indices: set[int] = field(default_factory=set)
    devices: set[str] = field(default_factory=set)


class FanoutPlanner:
    """Per-transfer gathering of shared chunk requests; see the module docstring."""

    def __init__(
        self,
        *,
        quiet_s: float = 0.1,
        max_wait_s: float = 1.0,
        forget_s: float = 120.0,
        straggler_share: float = 0.1,
    ):
        if not 0 < quiet_s <= max_wait_s:
            raise ValueError("fan-out needs 0 < quiet_s <= max_wait_s (seconds)")
        if not 0 <= straggler_share <= 1:
            raise ValueError("fan-out straggler_share is a fraction in 0..1 (e.g. 0.1)")
        self.straggler_share = straggler_share
        if forget_s <= max_wait_s:
            raise ValueError("fan-out forget_s must exceed max_wait_s (seconds)")
        self.quiet_s = quiet_s
        self.max_wait_s = max_wait_s
        self.forget_s = forget_s
        self._gathers: dict[str, _Gather] = {}
        # transfer -> device -> last time it was sent an install or asked for chunks
        self._fetching: dict[str, dict[str, float]] = {}
        # transfer -> devices sent an install of it that have not asked since
        self._unjoined: dict[str, set[str]] = {}

    def expect(self, transfer_id: str, device_id: str, *, now: float) -> None:
        """``device_id`` was sent an install of ``transfer_id``: it will join soon."""
        self._fetching.setdefault(transfer_id, {})[device_id] = now
        self._unjoined.setdefault(transfer_id, set()).add(device_id)

    def finished(self, device_id: str) -> None:
        """``device_id`` acknowledged its install: it fetches nothing any more."""
        for transfer_id in list(self._fetching):
            devices = self._fetching[transfer_id]
            devices.pop(device_id, None)
            if not devices:
                del self._fetching[transfer_id]
        for unjoined in self._unjoined.values():
            unjoined.discard(device_id)

    def join(
        self, transfer_id: str, device_id: str, indices: tuple[int, ...], *, now: float
    ) -> None:
        """``device_id`` listens on the shared topic and asks for ``indices``."""
        self._fetching.setdefault(transfer_id, {})[device_id] = now
        self._unjoined.get(transfer_id, set()).discard(device_id)
        gather = self._gathers.get(transfer_id)
        if gather is None:
            gather = self._gathers[transfer_id] = _Gather(first_at=now, last_at=now)
        gather.last_at = now
        gather.indices.update(indices)
        gather.devices.add(device_id)

    def due(self, *, now: float) -> list[tuple[str, list[int]]]:
        """Transfers to publish now with their sorted indices; they are forgotten here."""
        self._forget(now)
        out: list[tuple[str, list[int]]] = []
        for transfer_id, gather in list(self._gathers.items()):
            fetching = self._fetching.get(transfer_id, {})
            everyone = all(d in gather.devices for d in fetching)
            if (
                everyone
                or (self._quiet_counts(transfer_id) and now - gather.last_at >= self.quiet_s)
                or now - gather.first_at >= self.max_wait_s
            ):
                out.append((transfer_id, sorted(gather.indices)))
                del self._gathers[transfer_id]
        return out

    def next_due_in(self, *, now: float) -> float | None:
        """Seconds until the earliest gather is due at the latest (None: nothing waits)."""
        if not self._gathers:
            return None
        soonest = min(
            min(g.last_at + self.quiet_s, g.first_at + self.max_wait_s)
            if self._quiet_counts(t)
            else g.first_at + self.max_wait_s
            for t, g in self._gathers.items()
        )
        return max(0.0, soonest - now)

    def _quiet_counts(self, transfer_id: str) -> bool:
        """Whether a pause may end the gather: few enough devices still to ask first."""
        silent = len(self._unjoined.get(transfer_id, ()))
        fetching = len(self._fetching.get(transfer_id, ()))
        return silent <= max(1.0, self.straggler_share * fetching)

    @property
    def waiting(self) -> int:
        """Transfers with a gather in progress."""
        return len(self._gathers)

    def _forget(self, now: float) -> None:
        for transfer_id in list(self._fetching):
            devices = self._fetching[transfer_id]
            for device_id, seen in list(devices.items()):
                if now - seen > self.forget_s:
                    del devices[device_id]
                    self._unjoined.get(transfer_id, set()).discard(device_id)
            if not devices:
                del self._fetching[transfer_id]
                self._unjoined.pop(transfer_id, None)
