"""The fleet signs the commands it sends, so a device obeys only the fleet's key.

With a command key (``fedfleet fleet mqtt --command-key PEM``, or
``BridgeSettings.command_key``) every command leaving the bridge carries the signed
envelope of :mod:`edge_client.protocol.command_envelope`: ``issued_at`` from this
process's clock in milliseconds, strictly increasing (two commands in one millisecond
still differ), and ``expires_at`` ``ttl_s`` later. Without one, commands go unsigned:
devices still install (the bundle is signed) but refuse every rollback.
"""

from __future__ import annotations

import base64
import dataclasses
import threading
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_client.protocol import mqtt as proto
from edge_client.protocol.command_envelope import envelope_bytes

DEFAULT_TTL_S = 24 * 3600.0  # a queued command for an offline device stays valid a day


class CommandSigner:
    """Signs commands for one device each; thread-safe."""

    def __init__(
        self,
        key: Ed25519PrivateKey,
        *,
        ttl_s: float = DEFAULT_TTL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if ttl_s <= 0:
            raise ValueError("the command ttl must be positive seconds")
        self._key = key
        self._ttl_ms = int(ttl_s * 1000)
        self._clock = clock
        self._last = 0
        self._lock = threading.Lock()

    def _next_issued_at(self) -> int:
        with self._lock:
            self._last = max(int(self._clock() * 1000), self._last + 1)
            return self._last

    def sign(self, device_id: str, command: proto.Command) -> proto.Command:
        """``command`` with a fresh envelope (issued now) signed for ``device_id``."""
        issued = self._next_issued_at()
        unsigned = dataclasses.replace(
            command, issued_at=issued, expires_at=issued + self._ttl_ms, signature="-"
        )
        signature = self._key.sign(envelope_bytes(device_id, unsigned))
        return dataclasses.replace(unsigned, signature=base64.b64encode(signature).decode())
