"""The part of the fleet API the client uses, as data: routes, request bodies, results.

Each :class:`Route` names a method and a path under ``/api/v1`` (its ``{names}`` are
the API's path parameters), the fields the client may send (a ``TypedDict``: JSON body,
or multipart form fields plus ``files``) and the result it reads the answer into (a
dataclass whose field names are the JSON keys it reads). :class:`~fleet.client.api.FleetClient`
calls the API only through these constants, and ``tests/fleet/test_client_contract.py``
checks every one against the fleet app's OpenAPI, so renaming a route, a path parameter or
a field the client uses fails a test instead of a deployment. ``docs/fleet-api.md`` is the
contract for people.

Standard library only, like the rest of :mod:`fleet.client`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NotRequired, TypedDict

# --- results ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ArtifactInfo:
    """One artifact row of the registry (``ArtifactPublic``)."""

    id: int
    model_version_id: int
    format: str
    target: str
    filename: str
    size_bytes: int
    sha256: str
    signature: str | None

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> ArtifactInfo:
        return cls(
            id=int(body["id"]),
            model_version_id=int(body["model_version_id"]),
            format=str(body["format"]),
            target=str(body["target"]),
            filename=str(body["filename"]),
            size_bytes=int(body["size_bytes"]),
            sha256=str(body["sha256"]),
            signature=body.get("signature"),
        )


@dataclass(frozen=True)
class ModelInfo:
    """One model version of the registry (``ModelVersionPublic``)."""

    id: int
    task: str
    stage: str
    metrics: dict[str, float]
    artifacts: tuple[ArtifactInfo, ...]

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> ModelInfo:
        return cls(
            id=int(body["id"]),
            task=str(body["task"]),
            stage=str(body["stage"]),
            metrics={str(k): float(v) for k, v in (body.get("metrics") or {}).items()},
            artifacts=tuple(ArtifactInfo.from_json(a) for a in body.get("artifacts") or ()),
        )


@dataclass(frozen=True)
class RunInfo:
    """One federated run of the fleet (``RunPublic``; ``GET /runs/{id}`` adds its rounds)."""

    id: int
    name: str
    task: str
    strategy: str
    status: str
    config: dict[str, Any]
    final_model_version_id: int | None

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> RunInfo:
        final = body.get("final_model_version_id")
        return cls(
            id=int(body["id"]),
            name=str(body.get("name") or ""),
            task=str(body["task"]),
            strategy=str(body.get("strategy") or ""),
            status=str(body["status"]),
            config=dict(body.get("config") or {}),
            final_model_version_id=None if final is None else int(final),
        )


@dataclass(frozen=True)
class RunPage:
    """One page of runs, newest first (``Page[RunPublic]``)."""

    items: tuple[RunInfo, ...]
    total: int

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> RunPage:
        return cls(
            items=tuple(RunInfo.from_json(r) for r in body.get("items") or ()),
            total=int(body["total"]),
        )


@dataclass(frozen=True)
class RolloutDeviceInfo:
    """One device's row of a rollout (``RolloutDevicePublic``); ``phase`` is what it means
    now: ``waiting``, ``not_sent``, ``installed``, ``failed``, ``released``, ..."""

    device_id: str
    device_name: str
    wave: int
    phase: str
    attempts: int
    error: str

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> RolloutDeviceInfo:
        return cls(
            device_id=str(body["device_id"]),
            device_name=str(body.get("device_name") or ""),
            wave=int(body["wave"]),
            phase=str(body["phase"]),
            attempts=int(body.get("attempts") or 0),
            error=str(body.get("error") or ""),
        )


@dataclass(frozen=True)
class RolloutInfo:
    """A rollout with its devices (``RolloutDetail``); waves count from 0."""

    id: int
    model_version_id: int
    group: str
    status: str
    current_wave: int
    waves: int
    reason: str
    waiting: int
    devices: tuple[RolloutDeviceInfo, ...]

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> RolloutInfo:
        return cls(
            id=int(body["id"]),
            model_version_id=int(body["model_version_id"]),
            group=str(body["group"]),
            status=str(body["status"]),
            current_wave=int(body["current_wave"]),
            waves=len(body.get("progress") or ()),
            reason=str(body.get("reason") or ""),
            waiting=int(body.get("waiting") or 0),
            devices=tuple(RolloutDeviceInfo.from_json(d) for d in body.get("devices") or ()),
        )


@dataclass(frozen=True)
class WaveInfo:
    """One wave's counts in a rollout view (``WaveProgress``)."""

    devices: int
    installed: int

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> WaveInfo:
        return cls(devices=int(body["devices"]), installed=int(body["installed"]))


@dataclass(frozen=True)
class RolloutSummary:
    """A rollout with its per-wave progress (``RolloutPublic``); waves count from 0."""

    id: int
    model_version_id: int
    group: str
    status: str
    current_wave: int
    max_failure_rate: float
    reason: str
    progress: tuple[WaveInfo, ...]

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> RolloutSummary:
        return cls(
            id=int(body["id"]),
            model_version_id=int(body["model_version_id"]),
            group=str(body["group"]),
            status=str(body["status"]),
            current_wave=int(body["current_wave"]),
            max_failure_rate=float(body["max_failure_rate"]),
            reason=str(body.get("reason") or ""),
            progress=tuple(WaveInfo.from_json(w) for w in body.get("progress") or ()),
        )


@dataclass(frozen=True)
class RolloutPage:
    """One page of rollouts, newest first (``Page[RolloutPublic]``)."""

    items: tuple[RolloutSummary, ...]
    total: int

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> RolloutPage:
        return cls(
            items=tuple(RolloutSummary.from_json(r) for r in body.get("items") or ()),
            total=int(body["total"]),
        )


@dataclass(frozen=True)
class TokenInfo:
    """An API token without its secret (``ApiTokenPublic``)."""

    id: int
    name: str
    role: str
    prefix: str
    revoked_at: str | None

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> TokenInfo:
        return cls(
            id=int(body["id"]),
            name=str(body["name"]),
            role=str(body["role"]),
            prefix=str(body["prefix"]),
            revoked_at=body.get("revoked_at"),
        )


@dataclass(frozen=True)
class TokenCreated:
    """A new token: ``token`` is its secret, in this answer only (``ApiTokenCreated``)."""

    token: str
    info: TokenInfo

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> TokenCreated:
        return cls(token=str(body["token"]), info=TokenInfo.from_json(body["info"]))


@dataclass(frozen=True)
class BrokerLogin:
    """A device's broker username and password; the password is shown once."""

    username: str
    password: str

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> BrokerLogin:
        return cls(username=str(body["username"]), password=str(body["password"]))


@dataclass(frozen=True)
class EnrolledDevice:
    """A just-enrolled device's id and its broker credentials (``DeviceEnrolled``)."""

    device: DeviceRef
    mqtt: BrokerLogin

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> EnrolledDevice:
        return cls(
            device=DeviceRef.from_json(body["device"]), mqtt=BrokerLogin.from_json(body["mqtt"])
        )


@dataclass(frozen=True)
class DeviceRef:
    """A device's id and name (``DevicePublic``)."""

    id: str
    name: str

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> DeviceRef:
        return cls(id=str(body["id"]), name=str(body["name"]))


@dataclass(frozen=True)
class DeviceInfo:
    """One device of a device list (``DevicePublic``): what it runs and how it is."""

    id: str
    name: str
    hardware_target: str
    group: str | None
    status: str
    model_version_id: int | None

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> DeviceInfo:
        version = body.get("model_version_id")
        return cls(
            id=str(body["id"]),
            name=str(body["name"]),
            hardware_target=str(body["hardware_target"]),
            group=body.get("group"),
            status=str(body["status"]),
            model_version_id=None if version is None else int(version),
        )


@dataclass(frozen=True)
class DevicePage:
    """One page of devices by name (``DevicePage``); ``next_after`` pages on."""

    items: tuple[DeviceInfo, ...]
    total: int | None
    next_after: str | None

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> DevicePage:
        total = body.get("total")
        return cls(
            items=tuple(DeviceInfo.from_json(d) for d in body.get("items") or ()),
            total=None if total is None else int(total),
            next_after=body.get("next_after"),
        )


# --- request bodies (only the fields the client sends) -------------------------------


class RunCreateBody(TypedDict, total=False):
    """``RunCreate``."""

    name: str
    task: str
    strategy: str
    config: dict[str, Any]


class RunUpdateBody(TypedDict, total=False):
    """``RunUpdate``."""

    status: str
    final_model_version_id: int
    reason: str


class RoundReportBody(TypedDict, total=False):
    """``RoundReport``: a finished round's metrics."""

    accuracy: float
    loss: float
    duration_s: float
    epsilon: float
    metrics: dict[str, float]


class ModelCreateBody(TypedDict, total=False):
    """``ModelVersionCreate``: a version with its lineage."""

    task: str
    name: str
    description: str
    source_run_id: int
    source_round: int
    metrics: dict[str, float]
    parent_id: int


class ArtifactForm(TypedDict, total=False):
    """The form fields of an artifact upload (the bytes go in the ``file`` part)."""

    format: str
    target: str
    sha256: str
    signature: str


class RolloutAbortBody(TypedDict):
    """``RolloutAbort``: roll the current wave's installed devices back, or not."""

    rollback: bool


class RolloutCreateBody(TypedDict):
    """``RolloutCreate``."""

    model_version_id: int
    group: str
    waves: list[int]
    max_failure_rate: float
    ack_timeout_s: float
    # Model-aware canary (left out: not checked / defaults).
    max_accuracy_drop_points: NotRequired[float]
    max_latency_ratio: NotRequired[float]
    max_error_rate: NotRequired[float]
    max_prediction_shift: NotRequired[float]
    soak_s: NotRequired[float]
    min_quality_devices: NotRequired[int]
    min_quality_samples: NotRequired[int]


@dataclass(frozen=True)
class PolicyInfo:
    """One version of a group's promotion policy (``PolicyPublic``)."""

    group: str
    version: int
    current: bool
    signing: str
    source: str
    created_at: str
    created_by: str

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> PolicyInfo:
        return cls(
            group=str(body["group"]),
            version=int(body["version"]),
            current=bool(body["current"]),
            signing=str(body["signing"]),
            source=str(body["source"]),
            created_at=str(body["created_at"]),
            created_by=str(body["created_by"]),
        )


@dataclass(frozen=True)
class PromotionInfo:
    """A model version on its way to a group (``PromotionPublic``)."""

    id: int
    group: str
    policy_version: int
    model_version_id: int
    state: str
    decided_by: str | None

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> PromotionInfo:
        return cls(
            id=int(body["id"]),
            group=str(body["group"]),
            policy_version=int(body["policy_version"]),
            model_version_id=int(body["model_version_id"]),
            state=str(body["state"]),
            decided_by=body.get("decided_by"),
        )


@dataclass(frozen=True)
class TimelineEntry:
    """One item of a group's timeline (``TimelineItem``)."""

    at: str
    kind: str
    subject: str
    action: str
    actor: str
    summary: str
    reason: str

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> TimelineEntry:
        return cls(
            at=str(body["at"]),
            kind=str(body["kind"]),
            subject=str(body["subject"]),
            action=str(body["action"]),
            actor=str(body["actor"]),
            summary=str(body["summary"]),
            reason=str(body.get("reason") or ""),
        )


class PolicyApplyBody(TypedDict):
    """``PolicyApply``: the policy file's TOML text."""

    source: str


class TokenCreateBody(TypedDict, total=False):
    """``ApiTokenCreate``."""

    name: str
    role: str
    ttl_days: int


class GroupCreateBody(TypedDict):
    """``GroupCreate``."""

    name: str


class DeviceCreateBody(TypedDict, total=False):
    """``DeviceCreate``."""

    name: str
    hardware_target: str
    group: str


# --- routes ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    """One call of the fleet API (see the module docstring)."""

    method: str
    path: str
    body: Any = None  # the TypedDict of the fields sent, None when there is no body
    files: tuple[str, ...] = ()  # multipart file parts (the body is then form fields)
    result: type | None = None  # the dataclass the JSON answer is read into
    query: tuple[str, ...] = ()  # the query parameters the client may send

    def url(self, **params: int | str) -> str:
        """The path with its parameters filled in, e.g. ``/runs/7``."""
        return self.path.format(**params)


CREATE_RUN = Route("POST", "/runs", body=RunCreateBody, result=RunInfo)
GET_RUN = Route("GET", "/runs/{run_id}", result=RunInfo)
LIST_RUNS = Route("GET", "/runs", result=RunPage, query=("status", "limit"))
UPDATE_RUN = Route("PATCH", "/runs/{run_id}", body=RunUpdateBody, result=RunInfo)
REPORT_ROUND = Route("PUT", "/runs/{run_id}/rounds/{round_number}", body=RoundReportBody)
REGISTER_MODEL = Route("POST", "/models", body=ModelCreateBody, result=ModelInfo)
GET_MODEL = Route("GET", "/models/{model_id}", result=ModelInfo)
DEPRECATE_MODEL = Route("POST", "/models/{model_id}/deprecate", result=ModelInfo)
UPLOAD_ARTIFACT = Route(
    "POST", "/models/{model_id}/artifacts", body=ArtifactForm, files=("file",), result=ArtifactInfo
)
DOWNLOAD_ARTIFACT = Route("GET", "/artifacts/{artifact_id}/download")
GET_ROLLOUT = Route("GET", "/rollouts/{rollout_id}", result=RolloutInfo)
PAUSE_ROLLOUT = Route("POST", "/rollouts/{rollout_id}/pause", result=RolloutInfo)
RESUME_ROLLOUT = Route("POST", "/rollouts/{rollout_id}/resume", result=RolloutInfo)
ABORT_ROLLOUT = Route(
    "POST", "/rollouts/{rollout_id}/abort", body=RolloutAbortBody, result=RolloutInfo
)
CREATE_ROLLOUT = Route("POST", "/rollouts", body=RolloutCreateBody, result=RolloutSummary)
LIST_ROLLOUTS = Route("GET", "/rollouts", result=RolloutPage, query=("limit", "offset"))
CREATE_TOKEN = Route("POST", "/tokens", body=TokenCreateBody, result=TokenCreated)
LIST_TOKENS = Route("GET", "/tokens", result=TokenInfo)  # a JSON list of them
REVOKE_TOKEN = Route("DELETE", "/tokens/{token_id}", result=TokenInfo)
CREATE_GROUP = Route("POST", "/groups", body=GroupCreateBody)
ENROLL_DEVICE = Route("POST", "/devices", body=DeviceCreateBody, result=EnrolledDevice)
LIST_DEVICES = Route(
    "GET", "/devices", result=DevicePage, query=("model_version", "limit", "after")
)
APPLY_POLICY = Route("POST", "/policies", body=PolicyApplyBody, result=PolicyInfo)
LIST_POLICIES = Route("GET", "/policies", result=PolicyInfo)  # a JSON list of them
GET_POLICY = Route("GET", "/policies/{group}", result=PolicyInfo, query=("version",))
APPROVE_PROMOTION = Route("POST", "/promotions/{promotion_id}/approve", result=PromotionInfo)
GET_PROMOTION = Route("GET", "/promotions/{promotion_id}", result=PromotionInfo)
TIMELINE = Route("GET", "/timeline", result=TimelineEntry, query=("group", "model_version"))

#: Every call the client makes.
ROUTES: tuple[Route, ...] = (
    CREATE_RUN,
    GET_RUN,
    LIST_RUNS,
    UPDATE_RUN,
    REPORT_ROUND,
    REGISTER_MODEL,
    GET_MODEL,
    DEPRECATE_MODEL,
    UPLOAD_ARTIFACT,
    DOWNLOAD_ARTIFACT,
    GET_ROLLOUT,
    PAUSE_ROLLOUT,
    RESUME_ROLLOUT,
    ABORT_ROLLOUT,
    CREATE_ROLLOUT,
    LIST_ROLLOUTS,
    CREATE_TOKEN,
    LIST_TOKENS,
    REVOKE_TOKEN,
    CREATE_GROUP,
    ENROLL_DEVICE,
    LIST_DEVICES,
    APPLY_POLICY,
    LIST_POLICIES,
    GET_POLICY,
    APPROVE_PROMOTION,
    GET_PROMOTION,
    TIMELINE,
)
