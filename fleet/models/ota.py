"""Tables and schemas of OTA rollouts, device telemetry and drift.

A **rollout** installs one model version's bundle on the devices of one group in waves
(cumulative percentages, e.g. ``5,25,100``). Each device of the group gets one
``rollout_devices`` row with its wave and state; the fleet's rollout controller
(``fleet/ota/controller.py``) advances the waves. **Telemetry** rows are the devices'
inference summaries as received (one per message); **drift** compares their input bins
with the model's training reference (:class:`Reference`, the PSI math in
``fleet/ota/drift.py``).
"""

from __future__ import annotations

import enum
import itertools
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import Field as PydanticField
from pydantic import field_validator
from sqlalchemy import JSON, BigInteger, Index
from sqlmodel import Field

from fleet.db import UTCDateTime
from fleet.models.common import FleetModel, Id, InputModel, Slug, enum_type, utcnow


class RolloutStatus(str, enum.Enum):
    running = "running"
    paused = "paused"  # an operator paused it: no new wave, no resend (answers still count)
    succeeded = "succeeded"
    aborted = "aborted"

    @property
    def finished(self) -> bool:
        return self in (RolloutStatus.succeeded, RolloutStatus.aborted)


class DeviceRolloutState(str, enum.Enum):
    pending = "pending"  # not sent yet (a later wave)
    sent = "sent"  # install command sent, no answer yet
    installed = "installed"  # acknowledged: runs the new model
    failed = "failed"  # refused, failed its self-test, or never answered
    rolled_back = "rolled_back"  # back on its previous model after an abort
    released = "released"  # retired or silent too long: left out of its wave's verdict


class DevicePhase(str, enum.Enum):
    """What a device's row means to a reader, from its state and the rollout's position:
    ``waiting`` only for a wave that was sent and a rollout still going; a wave never sent
    is ``not_sent``; an install of a finished rollout that never answered is ``unanswered``."""

    not_sent = "not_sent"
    waiting = "waiting"
    installed = "installed"
    failed = "failed"
    rolled_back = "rolled_back"
    released = "released"
    unanswered = "unanswered"


def device_phase(
    state: DeviceRolloutState, *, wave: int, status: RolloutStatus, current_wave: int
) -> DevicePhase:
    """The :class:`DevicePhase` of a device in ``wave`` with stored ``state``."""
    if state in (DeviceRolloutState.pending, DeviceRolloutState.sent):
        if status.finished:
            return (
                DevicePhase.unanswered if state is DeviceRolloutState.sent else DevicePhase.not_sent
            )
        return DevicePhase.waiting if wave <= current_wave else DevicePhase.not_sent
    return DevicePhase(state.value)


class RolloutCreate(InputModel):
    """A staged rollout: ``waves`` are cumulative percentages of the group, ending at 100."""

    model_version_id: Id = PydanticField(description="Model version to install.")
    group: Slug = PydanticField(description="Group whose devices get it.")
    waves: list[int] = PydanticField(
        default_factory=lambda: [5, 25, 100],
        min_length=1,
        max_length=20,
        description="Cumulative percentages of the group per wave, increasing, ending at 100.",
    )
    max_failure_rate: float = PydanticField(
        default=0.1, ge=0.0, le=1.0, description="Failed fraction of a wave that aborts."
    )
    ack_timeout_s: float = PydanticField(
        default=600.0, gt=0.0, le=86400.0, description="Seconds a device has to acknowledge."
    )
    # Model-aware canary thresholds (fleet/ota/canary_quality.py); None: not checked.
    max_accuracy_drop_points: float | None = PydanticField(
        default=None,
        ge=0.0,
        le=100.0,
        description="Abort when the canary is this many accuracy points (0..100) below "
        "devices on the previous version (significant at 99 %; needs labels).",
    )
    max_latency_ratio: float | None = PydanticField(
        default=None,
        ge=1.0,
        le=1000.0,
        description="Abort when the canary's p95 latency is over this multiple of the "
        "previous version's.",
    )
    max_error_rate: float | None = PydanticField(
        default=None,
        ge=0.0,
        le=1.0,
        description="Abort when the canary's inference error rate is over this (0..1; "
        "its 99 % Wilson lower bound).",
    )
    max_prediction_shift: float | None = PydanticField(
        default=None,
        ge=0.0,
        le=1.0,
        description="Abort when the canary's predicted-class distribution is over this "
        "total variation distance (0..1) from the previous version's.",
    )
    soak_s: float = PydanticField(
        default=0.0,
        ge=0.0,
        le=7 * 86400.0,
        description="Seconds each wave is watched after it installed before the next "
        "starts (quality is checked throughout).",
    )
    min_quality_devices: int = PydanticField(
        default=2,
        ge=2,
        le=100_000,
        description="Devices with data each side needs before a quality signal counts.",
    )
    min_quality_samples: int = PydanticField(
        default=200,
        ge=1,
        le=10_000_000,
        description="Labelled samples (accuracy) or inferences (other signals) each side "
        "needs before a quality signal counts.",
    )

    @field_validator("waves")
    @classmethod
    def _check_waves(cls, waves: list[int]) -> list[int]:
        if any(not 1 <= w <= 100 for w in waves):
            raise ValueError("each wave is a percentage in 1..100, e.g. [5, 25, 100]")
        if any(b <= a for a, b in itertools.pairwise(waves)) or waves[-1] != 100:
            raise ValueError("waves must increase and end at 100, e.g. [5, 25, 100]")
        return waves


class Rollout(FleetModel, table=True):
    __tablename__ = "rollouts"

    id: int | None = Field(default=None, primary_key=True)
    model_version_id: int = Field(foreign_key="model_versions.id", index=True)
    group_id: int = Field(foreign_key="groups.id", index=True)
    waves: list[int] = Field(sa_type=JSON)
    max_failure_rate: float
    ack_timeout_s: float
    status: RolloutStatus = Field(
        default=RolloutStatus.running, sa_type=enum_type(RolloutStatus), index=True
    )
    current_wave: int = 0
    reason: str = Field(default="", max_length=1000)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    created_by: str = Field(max_length=100)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # After an abort: devices of waves >= this one that installed the new model are sent a
    # rollback (0 on an automatic abort: every wave; NULL: an operator kept them on it).
    rollback_from_wave: int | None = None
    # Model-aware canary (fleet/ota/canary_quality.py): NULL thresholds are not checked.
    max_accuracy_drop_points: float | None = None
    max_latency_ratio: float | None = None
    max_error_rate: float | None = None
    max_prediction_shift: float | None = None
    soak_s: float = 0.0
    min_quality_devices: int = 2
    min_quality_samples: int = 200


class RolloutDevice(FleetModel, table=True):
    __tablename__ = "rollout_devices"

    rollout_id: int = Field(foreign_key="rollouts.id", primary_key=True, ondelete="CASCADE")
    device_id: str = Field(foreign_key="devices.id", primary_key=True, max_length=32)
    wave: int
    artifact_id: int = Field(foreign_key="artifacts.id")
    state: DeviceRolloutState = Field(
        default=DeviceRolloutState.pending, sa_type=enum_type(DeviceRolloutState)
    )
    previous_model_version_id: int | None = None
    command_id: str | None = Field(default=None, max_length=64, index=True)
    attempts: int = 0
    sent_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    acked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    error: str = Field(default="", max_length=500)


class WaveProgress(FleetModel):
    wave: int
    percent: int
    devices: int
    installed: int
    failed: int
    waiting: int = PydanticField(description="Sent and not answered yet (rollout going on).")
    rolled_back: int
    released: int = PydanticField(description="Retired or silent too long; not counted.")
    not_sent: int = PydanticField(description="In a wave whose installs were never sent.")
    sent: bool = PydanticField(description="Whether this wave's installs went out.")


class RolloutAbort(InputModel):
    """An operator's abort: ``rollback`` sends the current wave's devices that installed
    the new model back to their previous one; ``false`` leaves them on it."""

    rollback: bool = PydanticField(
        description="Roll the current wave's installed devices back (true) or not (false)."
    )


class RolloutDevicePublic(FleetModel):
    device_id: str
    device_name: str
    wave: int
    state: DeviceRolloutState
    phase: DevicePhase
    attempts: int
    sent_at: datetime | None
    acked_at: datetime | None
    error: str


class RolloutPublic(FleetModel):
    id: int
    model_version_id: int
    group: str
    waves: list[int]
    max_failure_rate: float
    ack_timeout_s: float
    status: RolloutStatus
    current_wave: int
    reason: str
    created_at: datetime
    created_by: str
    finished_at: datetime | None
    progress: list[WaveProgress]
    waiting: int = PydanticField(description="Devices the rollout is waiting for now.")
    max_accuracy_drop_points: float | None = None
    max_latency_ratio: float | None = None
    max_error_rate: float | None = None
    max_prediction_shift: float | None = None
    soak_s: float = 0.0


class RolloutDetail(RolloutPublic):
    """A rollout with every device's row, by wave then device id."""

    devices: list[RolloutDevicePublic]


# --- telemetry and drift --------------------------------------------------------------


class TelemetryRecord(FleetModel, table=True):
    __tablename__ = "telemetry_records"
    # A message delivered twice (a replica killed between commit and acknowledgement)
    # is stored once: fleet/ota/telemetry_rows.py inserts with ON CONFLICT DO NOTHING.
    __table_args__ = (
        Index("ux_telemetry_records_device_id_digest", "device_id", "digest", unique=True),
    )

    id: int | None = Field(default=None, primary_key=True)
    device_id: str = Field(foreign_key="devices.id", index=True, max_length=32)
    received_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)
    model_version_id: int | None = Field(default=None, index=True)
    seq: int
    window_s: float
    count: int
    latency_p50_ms: float
    latency_p95_ms: float
    predictions: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    features: list[Any] = Field(default_factory=list, sa_type=JSON)
    errors: int = 0  # inference calls of the window that raised
    # The message's digest when written by replicated bridges (``--replica``), else NULL.
    digest: str | None = Field(default=None, max_length=32)


class FeedbackRecord(FleetModel, table=True):
    """One device ``feedback`` message: labelled outcomes of a window (label counts per
    true class, ``{"class": [correct, wrong]}``; ``labelled``/``correct`` their sums)."""

    __tablename__ = "feedback_records"
    # Like telemetry: a message delivered twice (two replicas, a redelivery) is stored
    # once; fleet/ota/telemetry_rows.py inserts with ON CONFLICT DO NOTHING.
    __table_args__ = (
        Index("ux_feedback_records_device_id_digest", "device_id", "digest", unique=True),
    )

    id: int | None = Field(default=None, primary_key=True)
    device_id: str = Field(foreign_key="devices.id", index=True, max_length=32)
    received_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)
    model_version_id: int | None = Field(default=None, index=True)
    seq: int
    window_s: float
    labelled: int = Field(sa_type=BigInteger)
    correct: int = Field(sa_type=BigInteger)
    labels: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    # The message's digest when written by replicated bridges (``--replica``), else NULL.
    digest: str | None = Field(default=None, max_length=32)


@dataclass(frozen=True)
class Reference:
    """Per-feature interior bin edges and expected fractions (``len(edges[j]) + 1`` each).

    The value a :class:`DriftReference` row stores: the API and the OTA drift check
    (``fleet/ota/drift.py``) exchange it.
    """

    edges: tuple[tuple[float, ...], ...]
    proportions: tuple[tuple[float, ...], ...]
    samples: int


# Limits of a drift reference: the same bounds as a device's telemetry bins
# (edge_client/protocol/mqtt.py MAX_FEATURES, MAX_BINS).
REFERENCE_MAX_FEATURES = 4096
REFERENCE_MAX_BINS = 1001


def check_reference(edges: Any, proportions: Any) -> None:
    """Raise ValueError (a one-line message saying how to fix it) unless ``edges`` and
    ``proportions`` are a usable reference: 1..4096 features, each with 1..1000 interior
    edges (so 2..1001 bins), finite and strictly increasing, and ``len(edges) + 1``
    finite, non-negative proportions summing to 1. The API refuses anything else (422)
    and the drift check skips a stored row that breaks it (rows written before)."""
    if not isinstance(edges, list | tuple) or not isinstance(proportions, list | tuple):
        raise ValueError("edges and proportions must be lists with one list per feature")
    if not 1 <= len(edges) <= REFERENCE_MAX_FEATURES or len(edges) != len(proportions):
        raise ValueError(
            f"give one edges list and one proportions list per feature "
            f"(1..{REFERENCE_MAX_FEATURES} features)"
        )
    for j, (e, p) in enumerate(zip(edges, proportions, strict=True)):
        if not _numbers(e) or not _numbers(p):
            raise ValueError(f"feature {j}: edges and proportions must be lists of finite numbers")
        if not 1 <= len(e) < REFERENCE_MAX_BINS:
            raise ValueError(
                f"feature {j}: give 1..{REFERENCE_MAX_BINS - 1} interior edges "
                f"(at least two bins), got {len(e)}"
            )
        if any(b <= a for a, b in itertools.pairwise(e)):
            raise ValueError(f"feature {j}: bin edges must increase strictly")
        if len(p) != len(e) + 1:
            raise ValueError(f"feature {j}: give len(edges) + 1 = {len(e) + 1} proportions")
        if any(v < 0 for v in p) or abs(sum(p) - 1.0) > 1e-3:
            raise ValueError(f"feature {j}: proportions must be non-negative and sum to 1")


def _numbers(values: Any) -> bool:
    return isinstance(values, list | tuple) and all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values
    )


class DriftReference(FleetModel, table=True):
    """A model version's training reference: per-feature bin edges and proportions."""

    __tablename__ = "drift_references"

    model_version_id: int = Field(foreign_key="model_versions.id", primary_key=True)
    edges: list[Any] = Field(sa_type=JSON)
    proportions: list[Any] = Field(sa_type=JSON)
    samples: int
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)  # last set
    pushed_at: datetime | None = Field(
        default=None,
        sa_type=UTCDateTime,
        description="When the MQTT service last sent these bins to the devices running the "
        "version (NULL: not since it was set).",
    )


class DriftReferencePublic(FleetModel):
    """A model version's training reference as stored (``GET .../drift-reference``)."""

    model_version_id: int
    edges: list[list[float]]
    proportions: list[list[float]]
    samples: int
    created_at: datetime = PydanticField(description="When it was last set.")
    pushed_at: datetime | None = PydanticField(
        description="When its bins were last sent to the devices running the version."
    )


class DriftEvent(FleetModel, table=True):
    __tablename__ = "drift_events"

    id: int | None = Field(default=None, primary_key=True)
    model_version_id: int = Field(foreign_key="model_versions.id", index=True)
    group_id: int | None = Field(default=None, foreign_key="groups.id")
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    method: str = Field(max_length=16)
    score: float
    threshold: float
    per_feature: list[Any] = Field(sa_type=JSON)
    samples: int
    run_id: int | None = Field(default=None, foreign_key="runs.id")
    population: int = Field(default=0)
    devices: list[Any] = Field(default_factory=list, sa_type=JSON)

    @property
    def agreeing(self) -> int:
        """How many of the scored devices drifted (each on its own window)."""
        return sum(1 for d in self.devices if isinstance(d, dict) and d.get("drifted"))


class DriftDeviceScore(FleetModel):
    """One device's own verdict in a drift check: its largest per-feature PSI."""

    device_id: str
    score: float
    samples: int
    drifted: bool


class DriftEventPublic(FleetModel):
    id: int
    model_version_id: int
    group: str | None
    created_at: datetime
    method: str
    score: float = PydanticField(description="Largest per-feature PSI.")
    threshold: float
    per_feature: list[float]
    samples: int
    run_id: int | None = PydanticField(description="Retraining run started from this event.")
    agreeing: int = PydanticField(description="Devices whose own window drifted.")
    population: int = PydanticField(
        description="Devices of the group the fleet has on record as running the version."
    )
    devices: list[DriftDeviceScore] = PydanticField(
        description="Every device scored in this check (drifted or not), highest score first."
    )
