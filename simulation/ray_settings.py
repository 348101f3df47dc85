"""``fedfleet simulate`` flags of the Ray engine: ``--ray-address``, ``--ray-workers``.

Checked before any run folder exists, and without importing Ray (``simulate`` without
``--engine ray`` never loads it): the flags need ``--engine ray``, and a given address
must answer on its port within a few seconds (Ray itself would retry for a minute before
saying it cannot connect) and answer as gRPC (Ray would wait for minutes on a port where
something else listens).
"""

from __future__ import annotations

import socket
from typing import Protocol
from urllib.parse import urlsplit

CONNECT_TIMEOUT_S = 3.0
RAY_CLIENT_PORT = 10001  # ray://HOST without a port: Ray Client's default
GCS_PORT = 6379  # HOST without a port: the head's default GCS port (ray start --head)
# A gRPC server answers the HTTP/2 client preface with a SETTINGS frame (RFC 9113 §3.4).
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
HTTP2_EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
HTTP2_SETTINGS = 0x04  # the frame type byte of a SETTINGS frame


class RayFields(Protocol):
    """The simulate settings this section reads."""

    @property
    def engine(self) -> str: ...
    @property
    def ray_address(self) -> str: ...
    @property
    def ray_workers(self) -> int: ...
    @property
    def app(self) -> str: ...


def validate_ray_settings(settings: RayFields) -> None:
    """Refuse Ray flags that cannot work, naming the flag to change."""
    if settings.engine != "ray":
        for flag, given in (
            ("--ray-address", bool(settings.ray_address)),
            ("--ray-workers", bool(settings.ray_workers)),
        ):
            if given:
                raise ValueError(f"{flag} needs --engine ray")
        return
    if settings.app:
        raise ValueError("--app runs on the in-process engine; drop --engine ray")
    if settings.ray_workers < 0:
        raise ValueError("--ray-workers must be >= 1, or 0 for one per CPU of the cluster")
    if settings.ray_address and settings.ray_address != "auto":
        check_reachable(settings.ray_address)


def host_port(address: str) -> tuple[str, int]:
    """The host and port of ``HOST[:PORT]`` or ``ray://HOST[:PORT]``."""
    client = address.startswith("ray://")
    parts = urlsplit(address if client else f"//{address}")
    default = RAY_CLIENT_PORT if client else GCS_PORT
    try:
        port = parts.port or default
    except ValueError:
        raise ValueError(f"--ray-address {address!r} is not HOST:PORT or ray://HOST:PORT") from None
    if not parts.hostname:
        raise ValueError(f"--ray-address {address!r} is not HOST:PORT or ray://HOST:PORT")
    return parts.hostname, port


def check_reachable(address: str) -> None:
    """One clear line when nothing answers at ``address``, or something that is not a
    gRPC server (Ray's GCS and Ray Client both are): given such a port, Ray would wait
    for it for minutes."""
    host, port = host_port(address)
    try:
        conn = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S)
    except OSError as exc:
        raise ValueError(
            f"no Ray cluster answers at --ray-address {address} ({exc.strerror or exc}); "
            "start one with `ray start --head` and pass the address it prints, or drop "
            "--ray-address to run a local Ray"
        ) from None
    with conn:
        try:
            conn.settimeout(CONNECT_TIMEOUT_S)
            conn.sendall(HTTP2_PREFACE + HTTP2_EMPTY_SETTINGS)
            answer = _read(conn, 9)
        except OSError:  # reset by a server of another protocol
            answer = b""
    if len(answer) < 9 or answer[3] != HTTP2_SETTINGS:
        raise ValueError(
            f"--ray-address {address} answers, but not as a Ray cluster (no gRPC); give the "
            f"head's GCS port (HOST:{GCS_PORT}) or Ray Client's (ray://HOST:{RAY_CLIENT_PORT})"
        )


def _read(conn: socket.socket, size: int) -> bytes:
    """Up to ``size`` bytes: fewer when the peer closes or stays silent."""
    data = b""
    while len(data) < size:
        try:
            chunk = conn.recv(size - len(data))
        except TimeoutError:
            break
        if not chunk:
            break
        data += chunk
    return data
