"""Where the fleet API is, the token that opens it, and the client's one error type.

Where the fleet is: ``--fleet-url`` or ``$FEDFLEET_URL`` (default the address
``fedfleet fleet serve`` listens on). The API token comes ONLY from ``$FEDFLEET_TOKEN``:
a command-line argument would land in shell history and process listings. The token is
never printed, logged or put in an error message.

Standard library only: importing it costs nothing and pulls in no server code.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

URL_ENV = "FEDFLEET_URL"
TOKEN_ENV = "FEDFLEET_TOKEN"  # noqa: S105 - the variable's name, not a secret
DEFAULT_URL = "http://127.0.0.1:8080"
API_PREFIX = "/api/v1"


class FleetError(Exception):
    """The fleet could not be used. ``str(err)`` is one line with the fix."""


class FleetInputError(FleetError):
    """The fleet refused what the caller sent (HTTP 422): the caller's input is wrong and
    ``str(err)`` is the fleet's one-line reason (commands exit 2 on it)."""


class FleetUnreachableError(FleetError):
    """No answer from the fleet (connection refused, timeout, TLS failure): a long-running
    caller (``fedfleet run autopilot``) may try again later."""


class FleetNotFoundError(FleetError):
    """The run, version or artifact asked for does not exist (or has no such artifact)."""


@dataclass(frozen=True)
class FleetConnection:
    """Where the fleet API is and the bearer token to use (``repr`` hides the token)."""

    url: str
    token: str

    def __repr__(self) -> str:
        return f"FleetConnection(url={self.url!r}, token=<hidden>)"


def connection_from_env(
    url: str | None = None, environ: Mapping[str, str] | None = None
) -> FleetConnection:
    """The fleet URL (argument, else ``$FEDFLEET_URL``, else the default) and the token.

    Raises:
        FleetError: the URL is not ``http(s)://host[:port]`` or ``$FEDFLEET_TOKEN`` is unset.
    """
    env = os.environ if environ is None else environ
    raw = (url or env.get(URL_ENV) or DEFAULT_URL).strip().rstrip("/")
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FleetError(
            f"fleet URL {raw!r} is not an http(s) address; pass --fleet-url "
            "http://HOST:PORT (what `fedfleet fleet serve` prints)"
        )
    if parts.query or parts.fragment or parts.username:
        raise FleetError(
            f"fleet URL {raw!r} must be just scheme://host:port[/prefix]; drop the "
            "user, query and fragment (the token goes in $FEDFLEET_TOKEN)"
        )
    raw = raw.removesuffix(API_PREFIX)
    token = env.get(TOKEN_ENV, "").strip()
    if not token:
        raise FleetError(
            f"${TOKEN_ENV} is not set; `export {TOKEN_ENV}=...` with a token from `fedfleet "
            "fleet token create --role operator` (the very first admin token: `fedfleet fleet "
            "token create --bootstrap --database-url URL`); it is never taken on the command line"
        )
    return FleetConnection(url=raw, token=token)


def parse_model_version(raw: str) -> int:
    """``"7"`` → 7; anything else is refused with the fix."""
    text = raw.strip()
    if not re.fullmatch(r"[0-9]{1,10}", text) or not 0 < int(text) < 2**31:
        raise FleetError(
            f"--model {raw!r} is not a model version number; pass the number the registry "
            "shows (GET /api/v1/models, or `fedfleet model register` prints it), e.g. --model 7"
        )
    return int(text)
