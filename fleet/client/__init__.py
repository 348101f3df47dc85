"""The typed HTTP client of the fleet API: how every other package reaches the fleet.

``from fleet.client import FleetClient, connection_from_env, FleetError`` is all a caller
needs: :mod:`~fleet.client.connection` (where the fleet is, the token, the error type),
:mod:`~fleet.client.routes` (the calls, request bodies and results, checked against the
app's OpenAPI by ``tests/fleet/test_client_contract.py``), :mod:`~fleet.client.api` (the
client). Importing it imports none of the fleet's server code (FastAPI, SQLModel), only
the standard library; httpx is imported when a client is made.
"""

from fleet.client.api import MAX_DOWNLOAD_BYTES, TIMEOUT_S, FleetClient
from fleet.client.connection import (
    API_PREFIX,
    DEFAULT_URL,
    TOKEN_ENV,
    URL_ENV,
    FleetConnection,
    FleetError,
    FleetInputError,
    FleetNotFoundError,
    FleetUnreachableError,
    connection_from_env,
    parse_model_version,
)
from fleet.client.routes import (
    ArtifactInfo,
    ModelInfo,
    PolicyInfo,
    PromotionInfo,
    RolloutDeviceInfo,
    RolloutInfo,
    RoundReportBody,
    RunInfo,
    TimelineEntry,
)

__all__ = [
    "API_PREFIX",
    "DEFAULT_URL",
    "MAX_DOWNLOAD_BYTES",
    "TIMEOUT_S",
    "TOKEN_ENV",
    "URL_ENV",
    "ArtifactInfo",
    "FleetClient",
    "FleetConnection",
    "FleetError",
    "FleetInputError",
    "FleetNotFoundError",
    "FleetUnreachableError",
    "ModelInfo",
    "PolicyInfo",
    "PromotionInfo",
    "RolloutDeviceInfo",
    "RolloutInfo",
    "RoundReportBody",
    "RunInfo",
    "TimelineEntry",
    "connection_from_env",
    "parse_model_version",
]
