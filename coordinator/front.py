"""What ``fedfleet coordinator up`` runs: the SuperLink on loopback and its TLS fronts.

Three listeners, each on its own port:

* ``superlink.control-address`` (loopback only): ``flower-superlink`` itself — Control,
  Fleet and Runtime APIs. Operator commands on this host (``coordinator add-site``,
  ``run submit/status/resume``, ``flwr``) and Flower's own SuperExec use it.
* ``superlink.address`` (public): ``FleetGateway`` with the Fleet API's routes only; the
  address in every site's ``site.toml``.
* ``superlink.operator-address`` (optional): every route, but the TLS handshake requires
  a client certificate issued by ``tls.operator-ca`` (``fedfleet certs create-operator``).

The public sockets are bound before the SuperLink starts, so a port in use fails at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import Callable, Coroutine
from typing import IO, Any

from coordinator.fleet_gateway import (
    FleetGateway,
    bind,
    gateway_server,
    serve_until,
    upstream_ssl_context,
)
from coordinator.superlink import CoordinatorSettings, SuperLinkProcess


def _event_loop_runner() -> Callable[[Coroutine[Any, Any, None]], None]:
    """uvloop when installed (uvicorn's own choice): on the standard asyncio loop the TLS
    front added ~40 ms to every request here (measured, 2-core machine), on uvloop ~1 ms."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run  # type: ignore[no-any-return]


class CoordinatorFront:
    """The SuperLink child process and the gateways in front of it."""

    def __init__(self, settings: CoordinatorSettings, *, log_file: IO[bytes] | None) -> None:
        self.settings = settings
        self.superlink = SuperLinkProcess(settings, log_file=log_file, own_session=False)
        self._listeners: list[tuple[Any, socket.socket]] = []
        self._stopping = False
        self._previous_handlers: dict[int, Any] = {}

    def _stop(self, signum: int, frame: object) -> None:
        self._stopping = True

    def start(self) -> None:
        """Bind the public ports, start the SuperLink and wait until it answers.

        SIGINT/SIGTERM are ours from here on (until ``serve`` returns): one arriving
        while the SuperLink starts must still stop it, not orphan it."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous_handlers[sig] = signal.signal(sig, self._stop)
        settings = self.settings
        settings.check_tls_files()
        upstream = f"https://{settings.control_address}"
        verify = upstream_ssl_context(settings.ca_cert)
        plans: list[tuple[str, int, FleetGateway, Any]] = [
            (settings.host, settings.port, FleetGateway(upstream=upstream, verify=verify), None)
        ]
        if settings.operator_port:
            every_route = FleetGateway(upstream=upstream, verify=verify, routes=None, timeout=None)
            plans.append(
                (settings.operator_host, settings.operator_port, every_route, settings.operator_ca)
            )
        try:
            for host, port, app, client_ca in plans:
                try:
                    sock = bind(host, port)
                except OSError as exc:
                    raise OSError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
                server = gateway_server(
                    app,
                    host=host,
                    port=port,
                    certificate=settings.certificate,
                    private_key=settings.private_key,
                    client_ca=client_ca,
                )
                self._listeners.append((server, sock))
            self.superlink.start()
        except BaseException:
            self.superlink.stop()
            self._close_sockets()
            self._restore_signals()
            raise

    def serve(self) -> str:
        """Serve until SIGINT/SIGTERM (returns "") or the SuperLink dies (returns why)."""
        process = self.superlink.process
        try:
            _event_loop_runner()(
                serve_until(
                    self._listeners,
                    stop=lambda: (
                        self._stopping or (process is not None and process.poll() is not None)
                    ),
                )
            )
        except RuntimeError as exc:
            return str(exc)
        finally:
            self.superlink.stop()
            self._close_sockets()
            self._restore_signals()
        if self._stopping:
            return ""
        code = None if process is None else process.returncode
        return f"the SuperLink exited with code {code}"

    def _close_sockets(self) -> None:
        for _, sock in self._listeners:
            with contextlib.suppress(OSError):
                sock.close()

    def _restore_signals(self) -> None:
        for sig, handler in self._previous_handlers.items():
            signal.signal(sig, handler)
        self._previous_handlers.clear()
