"""Rollouts as records: plan the waves, create a rollout, view its progress.

A rollout installs one model version on the devices of one group, wave by wave. Waves
are cumulative percentages of the group (``5,25,100`` → the first 5 % of devices, then up
to 25 %, then everyone; each wave at least one device). Creating one only records it
(``rollouts``, ``rollout_devices``); the OTA rollout controller of the fleet's MQTT
service (``fleet/ota/controller.py``) carries it out.
"""

from __future__ import annotations

import math
import secrets
from collections import Counter
from collections.abc import Sequence

from sqlalchemy import func, insert
from sqlmodel import Session, col, select

from fleet import audit
from fleet.errors import Conflict, InvalidReference
from fleet.models.common import utcnow
from fleet.models.devices import Device, Group
from fleet.models.ota import (
    DevicePhase,
    DeviceRolloutState,
    Rollout,
    RolloutCreate,
    RolloutDetail,
    RolloutDevice,
    RolloutDevicePublic,
    RolloutPublic,
    RolloutStatus,
    WaveProgress,
    device_phase,
)
from fleet.models.registry import Artifact, ArtifactFormat, ModelStage, ModelVersion


def plan_waves(count: int, percents: Sequence[int]) -> list[int]:
    """Cumulative device counts per wave: ``ceil(count * p / 100)``, at least one more each.

    >>> plan_waves(20, [5, 25, 100])
    [1, 5, 20]
    """
    if count < 1:
        raise ValueError("a rollout needs at least one device")
    if not percents or percents[-1] != 100 or any(not 0 < p <= 100 for p in percents):
        raise ValueError("waves are increasing percentages in 1..100 ending at 100")
    sizes: list[int] = []
    for p in percents:
        size = max(math.ceil(count * p / 100), (sizes[-1] + 1) if sizes else 1)
        sizes.append(min(size, count))
    # Percentages closer than one device collapse: drop repeated totals.
    return [s for i, s in enumerate(sizes) if i == 0 or s > sizes[i - 1]]


def create_rollout(session: Session, data: RolloutCreate, *, actor: audit.Actor) -> Rollout:
    """Check the model, group and bundles, assign devices to waves, record it."""
    model = session.get(ModelVersion, data.model_version_id)
    if model is None:
        raise InvalidReference(
            f"model version {data.model_version_id} is not registered; list them with "
            "GET /api/v1/models"
        )
    if model.stage is ModelStage.deprecated:
        raise Conflict(f"model version {model.id} is deprecated and cannot be rolled out")
    group = session.exec(select(Group).where(Group.name == data.group)).first()
    if group is None:
        raise InvalidReference(f"group '{data.group}' does not exist; create it first")
    busy = session.exec(
        select(Rollout.id).where(
            Rollout.group_id == group.id,
            col(Rollout.status).in_([RolloutStatus.running, RolloutStatus.paused]),
        )
    ).first()
    if busy is not None:
        raise Conflict(
            f"rollout {busy} is still running on group '{data.group}'; wait for it, or "
            f"abort it (`fedfleet rollout abort {busy}`, POST /api/v1/rollouts/{busy}/abort)"
        )
    devices = session.exec(
        select(Device)
        .where(Device.group_id == group.id, col(Device.retired_at).is_(None))
        .order_by(col(Device.id))
    ).all()
    if not devices:
        raise Conflict(f"group '{data.group}' has no active devices; enroll some first")
    bundles = {
        a.target: a
        for a in session.exec(
            select(Artifact).where(
                Artifact.model_version_id == model.id, Artifact.format == ArtifactFormat.bundle
            )
        ).all()
    }
    missing = sorted({d.hardware_target for d in devices} - set(bundles))
    if missing:
        raise Conflict(
            f"model version {model.id} has no signed bundle for target(s) {missing}; build "
            "one with `fedfleet image build` and attach it as a 'bundle' artifact"
        )
    rollout = Rollout(
        model_version_id=model.id or 0,
        group_id=group.id or 0,
        waves=list(data.waves),
        max_failure_rate=data.max_failure_rate,
        ack_timeout_s=data.ack_timeout_s,
        max_accuracy_drop_points=data.max_accuracy_drop_points,
        max_latency_ratio=data.max_latency_ratio,
        max_error_rate=data.max_error_rate,
        max_prediction_shift=data.max_prediction_shift,
        soak_s=data.soak_s,
        min_quality_devices=data.min_quality_devices,
        min_quality_samples=data.min_quality_samples,
        created_by=actor.name,
    )
    session.add(rollout)
    session.flush()
    # Random wave order (so wave 1 is not always the same devices), from a CSPRNG.
    order = sorted(devices, key=lambda _d: secrets.randbits(32))
    totals = plan_waves(len(order), data.waves)
    start = 0
    members: list[dict[str, object]] = []
    for wave, total in enumerate(totals):
        members.extend(
            {
                "rollout_id": rollout.id or 0,
                "device_id": device.id,
                "wave": wave,
                "artifact_id": bundles[device.hardware_target].id or 0,
                "state": DeviceRolloutState.pending,
                "previous_model_version_id": device.model_version_id,
                "attempts": 0,
                "error": "",
            }
            for device in order[start:total]
        )
        start = total
    # One multi-row INSERT for the whole group (ORM objects cost ~0.2 ms a device).
    session.execute(insert(RolloutDevice), members)
    audit.record(
        session,
        actor=actor,
        action="rollout.create",
        entity_type="rollout",
        entity_id=rollout.id or 0,
        after=public_view(session, rollout),
    )
    return rollout


def state_counts(session: Session, rollout_id: int) -> dict[int, Counter[DeviceRolloutState]]:
    """Devices per wave and state, counted in the database (one GROUP BY), not by loading
    every device's row."""
    counts: dict[int, Counter[DeviceRolloutState]] = {}
    for wave, state, count in session.exec(
        select(RolloutDevice.wave, RolloutDevice.state, func.count())
        .where(RolloutDevice.rollout_id == rollout_id)
        .group_by(col(RolloutDevice.wave), col(RolloutDevice.state))
    ).all():
        counts.setdefault(wave, Counter())[DeviceRolloutState(state)] += count
    return counts


def public_view(session: Session, rollout: Rollout) -> RolloutPublic:
    """The rollout with per-wave progress (counted in the database)."""
    group = session.get(Group, rollout.group_id)
    counts = state_counts(session, rollout.id or 0)
    progress = []
    total = sum(c.total() for c in counts.values())
    cumulative = 0
    for wave in sorted(counts):
        phases: Counter[DevicePhase] = Counter()
        for state, count in counts[wave].items():
            phases[
                device_phase(
                    state, wave=wave, status=rollout.status, current_wave=rollout.current_wave
                )
            ] += count
        cumulative += counts[wave].total()
        progress.append(
            WaveProgress(
                wave=wave,
                percent=round(100 * cumulative / total) if total else 0,
                devices=counts[wave].total(),
                installed=phases[DevicePhase.installed],
                failed=phases[DevicePhase.failed],
                waiting=phases[DevicePhase.waiting],
                rolled_back=phases[DevicePhase.rolled_back],
                released=phases[DevicePhase.released],
                not_sent=phases[DevicePhase.not_sent],
                sent=wave <= rollout.current_wave,
            )
        )
    return RolloutPublic(
        id=rollout.id or 0,
        model_version_id=rollout.model_version_id,
        group=group.name if group else "",
        waves=list(rollout.waves),
        max_failure_rate=rollout.max_failure_rate,
        ack_timeout_s=rollout.ack_timeout_s,
        status=rollout.status,
        current_wave=rollout.current_wave,
        reason=rollout.reason,
        created_at=rollout.created_at,
        created_by=rollout.created_by,
        finished_at=rollout.finished_at,
        progress=progress,
        waiting=sum(w.waiting for w in progress),
        max_accuracy_drop_points=rollout.max_accuracy_drop_points,
        max_latency_ratio=rollout.max_latency_ratio,
        max_error_rate=rollout.max_error_rate,
        max_prediction_shift=rollout.max_prediction_shift,
        soak_s=rollout.soak_s,
    )


def detail_view(session: Session, rollout: Rollout) -> RolloutDetail:
    """The rollout with every device's row (by wave, then device id) and its phase."""
    rows = session.exec(
        select(RolloutDevice, Device.name)
        .join(Device, col(Device.id) == col(RolloutDevice.device_id))
        .where(RolloutDevice.rollout_id == rollout.id)
        .order_by(col(RolloutDevice.wave), col(RolloutDevice.device_id))
    ).all()
    devices = [
        RolloutDevicePublic(
            device_id=row.device_id,
            device_name=name,
            wave=row.wave,
            state=row.state,
            phase=device_phase(
                row.state,
                wave=row.wave,
                status=rollout.status,
                current_wave=rollout.current_wave,
            ),
            attempts=row.attempts,
            sent_at=row.sent_at,
            acked_at=row.acked_at,
            error=row.error,
        )
        for row, name in rows
    ]
    return RolloutDetail(**public_view(session, rollout).model_dump(), devices=devices)


# --- an operator steers: pause, resume, abort ------------------------------------------


def _locked(session: Session, rollout_id: int) -> Rollout | None:
    """The rollout, locked against the controller's concurrent step (PostgreSQL)."""
    return session.get(Rollout, rollout_id, with_for_update=True)


def _refuse(rollout: Rollout, verb: str) -> Conflict:
    if rollout.status.finished:
        return Conflict(
            f"rollout {rollout.id} is {rollout.status.value}; a finished rollout cannot be "
            f"{verb}d (start a new one with POST /api/v1/rollouts)"
        )
    return Conflict(f"rollout {rollout.id} is {rollout.status.value}; it cannot be {verb}d")


def change_rollout(
    session: Session, rollout: Rollout, action: str, actor: audit.Actor, **changes: object
) -> Rollout:
    """Set ``changes`` on ``rollout`` and audit ``action`` with its view before and after."""
    before = public_view(session, rollout)
    for key, value in changes.items():
        setattr(rollout, key, value)
    session.add(rollout)
    session.flush()
    audit.record(
        session,
        actor=actor,
        action=action,
        entity_type="rollout",
        entity_id=rollout.id or 0,
        before=before,
        after=public_view(session, rollout),
    )
    return rollout


def pause_rollout(session: Session, rollout_id: int, *, actor: audit.Actor) -> Rollout | None:
    """Stop sending: no new wave and no resend until resumed; answers still count.
    None when there is no such rollout; :class:`Conflict` unless it is running."""
    rollout = _locked(session, rollout_id)
    if rollout is None:
        return None
    if rollout.status is not RolloutStatus.running:
        raise _refuse(rollout, "pause")
    return change_rollout(session, rollout, "rollout.pause", actor, status=RolloutStatus.paused)


def resume_rollout(session: Session, rollout_id: int, *, actor: audit.Actor) -> Rollout | None:
    """Continue a paused rollout where it stopped."""
    rollout = _locked(session, rollout_id)
    if rollout is None:
        return None
    if rollout.status is not RolloutStatus.paused:
        raise _refuse(rollout, "resume")
    return change_rollout(session, rollout, "rollout.resume", actor, status=RolloutStatus.running)


def abort_rollout(
    session: Session, rollout_id: int, *, rollback: bool, actor: audit.Actor
) -> Rollout | None:
    """Stop a running or paused rollout for good. With ``rollback`` the devices of the
    current wave that installed the new model are sent back to their previous one by the
    OTA controller (earlier, finished waves keep it); without, they stay on it."""
    rollout = _locked(session, rollout_id)
    if rollout is None:
        return None
    if rollout.status.finished:
        raise _refuse(rollout, "abort")
    wave = rollout.current_wave + 1
    kept = "rolled back" if rollback else "kept on the new model"
    return change_rollout(
        session,
        rollout,
        "rollout.abort",
        actor,
        status=RolloutStatus.aborted,
        reason=f"aborted by {actor.name} in wave {wave}; its installed devices are {kept}",
        finished_at=utcnow(),
        rollback_from_wave=rollout.current_wave if rollback else None,
    )
