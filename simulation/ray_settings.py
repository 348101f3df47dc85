"""``fedfleet simulate`` flags of the Ray engine: ``--ray-address``, ``--ray-workers``.

Checked before any run folder exists, and without importing Ray (``simulate`` without
``--engine ray`` never loads it): the flags need ``--engine ray``, and a given address
must answer on its port within a few seconds (Ray itself would retry for a minute before
saying it cannot connect).
"""

from __future__ import annotations

import socket
from typing import Protocol
from urllib.parse import urlsplit

CONNECT_TIMEOUT_S = 3.0
RAY_CLIENT_PORT = 10001  # ray://HOST without a port: Ray Client's default
GCS_PORT = 6379  # HOST without a port: the head's default GCS port (ray start --head)


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
    """One clear line when nothing answers at ``address``."""
    host, port = host_port(address)
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise ValueError(
            f"no Ray cluster answers at --ray-address {address} ({exc.strerror or exc}); "
            "start one with `ray start --head` and pass the address it prints, or drop "
            "--ray-address to run a local Ray"
        ) from None
