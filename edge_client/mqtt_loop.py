"""One network thread for many paho MQTT clients (the simulator's thousand devices).

paho's own ``loop_start()`` gives each client a thread that waits in ``select.select``,
which cannot watch file descriptors above 1023: past about 330 clients in one process
(each holds a socket and a socket pair) connections silently fail. :class:`SharedLoop`
drives any number of clients from one thread with :mod:`selectors` (epoll on Linux)
through paho's external-loop interface (``on_socket_open/close``,
``on_socket_register_write/unregister_write``, ``loop_read``, ``loop_write``,
``loop_misc``), and reconnects dropped clients with a back-off, as ``loop_start`` would.

Callbacks (``on_connect``, ``on_message``...) still run on this one thread, so they must
only enqueue — which the device agent's do.

paho's external-loop interface has a race when another thread publishes: paho skips
``on_socket_register_write`` while its "registered" flag is still set, and this loop
may clear that flag a moment later (its write queue looked empty just before) — the
packet then waits for the next write of that client, up to the keepalive (acks were
seen 50 s late at 300 devices). A sweep every ``_SWEEP_EVERY_S`` writes any client
that has packets waiting, so a stranded packet waits at most that long.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt

log = logging.getLogger(__name__)

_MISC_EVERY_S = 1.0
_SWEEP_EVERY_S = 0.05


class SharedLoop:
    """Drives the network I/O of many :class:`paho.mqtt.client.Client` in one thread."""

    def __init__(self, *, reconnect_min_s: float = 1.0, reconnect_max_s: float = 5.0) -> None:
        self._selector = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._clients: dict[mqtt.Client, dict[str, Any]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mqtt-shared-loop", daemon=True)
        self._min, self._max = reconnect_min_s, reconnect_max_s
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)  # a full pipe already means "wake up"
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)

    def start(self) -> SharedLoop:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake()
        self._thread.join(timeout=10)
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def add(self, client: mqtt.Client, *, host: str, port: int, keepalive: int) -> None:
        """Hand ``client`` to this loop and connect it (retried until it succeeds)."""
        client.on_socket_open = self._on_open
        client.on_socket_close = self._on_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        with self._lock:
            self._clients[client] = {
                "host": host,
                "port": port,
                "keepalive": keepalive,
                "retry_at": 0.0,
                "delay": self._min,
                "wanted": True,
                "started": False,
            }
        self._wake()

    def remove(self, client: mqtt.Client) -> None:
        """Stop reconnecting ``client`` (call before ``client.disconnect()``)."""
        with self._lock:
            state = self._clients.get(client)
            if state is not None:
                state["wanted"] = False

    # --- paho socket callbacks (any thread) ---------------------------------------

    def _on_open(self, client: mqtt.Client, _u: Any, sock: Any) -> None:
        self._register(sock, selectors.EVENT_READ, client)

    def _on_close(self, _client: mqtt.Client, _u: Any, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(sock)

    def _on_register_write(self, client: mqtt.Client, _u: Any, sock: Any) -> None:
        self._register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, client)
        self._wake()

    def _on_unregister_write(self, client: mqtt.Client, _u: Any, sock: Any) -> None:
        self._register(sock, selectors.EVENT_READ, client)

    def _register(self, sock: Any, events: int, client: mqtt.Client) -> None:
        try:
            self._selector.modify(sock, events, client)
        except KeyError:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.register(sock, events, client)
        except ValueError:  # closed socket
            pass

    def _wake(self) -> None:
        if threading.current_thread() is self._thread:
            return  # the loop itself is awake
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(b"x")

    # --- the loop -----------------------------------------------------------------

    def _run(self) -> None:
        next_misc = next_sweep = 0.0
        while not self._stop.is_set():
            try:
                events = self._selector.select(timeout=_SWEEP_EVERY_S)
            except (OSError, ValueError):
                events = []
            for key, mask in events:
                client = key.data
                if client is None:
                    try:
                        while self._wake_r.recv(4096):
                            pass
                    except (BlockingIOError, OSError):
                        pass
                    continue
                if mask & selectors.EVENT_READ:
                    client.loop_read()
                if mask & selectors.EVENT_WRITE:
                    client.loop_write()
            now = time.monotonic()
            if now >= next_sweep:
                next_sweep = now + _SWEEP_EVERY_S
                self._sweep()
            if now >= next_misc:
                next_misc = now + _MISC_EVERY_S
                self._misc_and_reconnect(now)

    def _sweep(self) -> None:
        """Write every client with packets waiting (see the race in the module docstring)."""
        with self._lock:
            clients = [c for c, state in self._clients.items() if state["wanted"]]
        for client in clients:
            if client.socket() is not None and client.want_write():
                try:
                    client.loop_write()
                except Exception:
                    log.exception("write of one client failed")

    def _misc_and_reconnect(self, now: float) -> None:
        with self._lock:
            items = list(self._clients.items())
        for client, state in items:
            if not state["wanted"]:
                continue
            if client.socket() is not None:
                try:
                    client.loop_misc()
                except Exception:
                    log.exception("keepalive of one client failed")
                if client.is_connected() or client.socket() is not None:
                    state["delay"] = self._min
                    continue
            if now < state["retry_at"]:
                continue
            try:
                if state["started"]:
                    client.reconnect()
                else:
                    client.connect(state["host"], state["port"], state["keepalive"])
                    state["started"] = True
            except OSError as err:
                log.info("connect failed (%s); retrying in %.1f s", err, state["delay"])
                state["retry_at"] = now + state["delay"]
                state["delay"] = min(state["delay"] * 2, self._max)
