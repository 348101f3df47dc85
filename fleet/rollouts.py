"""Staged rollouts: plan waves, send installs, advance or abort, roll back.

A rollout installs one model version on the devices of one group, wave by wave. Waves
are cumulative percentages of the group (``5,25,100`` → the first 5 % of devices, then up
to 25 %, then everyone; each wave at least one device). The controller
(:class:`RolloutController`, run by the fleet's MQTT service) steps every running
rollout:

1. devices of the current wave that were not sent an install yet get one;
2. a device that does not acknowledge within ``ack_timeout_s`` is sent the install
   again, and counts as failed after ``max_attempts`` sends;
3. health must hold: a device that installed and then went offline (Last Will) counts
   as failed;
4. :func:`wave_verdict` decides: **abort** as soon as the failed fraction of the wave
   exceeds ``max_failure_rate`` (no later answer can bring it back under); **advance**
   when every device of the wave answered; otherwise wait;
5. on abort, every device of the rollout that installed the new model is sent a
   ``rollback`` and the rollout is marked aborted with the reason; devices whose install
   failed never left their previous model.

State lives in the database (``rollouts``, ``rollout_devices``), so the service can
restart at any step.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, Protocol

from sqlalchemy import Engine, func, insert, update
from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import Session, col, select

from edge_client.protocol import mqtt as proto
from fleet import audit
from fleet.db import session_scope
from fleet.errors import Conflict, InvalidReference
from fleet.models.common import utcnow
from fleet.models.devices import Device, Group, ReportedStatus
from fleet.models.ota import (
    DeviceRolloutState,
    DriftReference,
    Rollout,
    RolloutCreate,
    RolloutDevice,
    RolloutPublic,
    RolloutStatus,
    WaveProgress,
)
from fleet.models.registry import Artifact, ArtifactFormat, ModelStage, ModelVersion

log = logging.getLogger(__name__)

Verdict = Literal["wait", "advance", "abort"]
MAX_ATTEMPTS = 3
OFFLINE_AFTER_INSTALL = "went offline after installing the new model"


# --- pure decisions -------------------------------------------------------------------


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


def wave_verdict(*, size: int, installed: int, failed: int, max_failure_rate: float) -> Verdict:
    """Abort when ``failed / size > max_failure_rate``; advance when all answered."""
    if size < 1:
        raise ValueError("a wave has at least one device")
    if failed / size > max_failure_rate:
        return "abort"
    if installed + failed >= size:
        return "advance"
    return "wait"


# --- creation and views ---------------------------------------------------------------


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
            Rollout.group_id == group.id, Rollout.status == RolloutStatus.running
        )
    ).first()
    if busy is not None:
        raise Conflict(f"rollout {busy} is still running on group '{data.group}'; wait for it")
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


def _state_counts(session: Session, rollout_id: int) -> dict[int, Counter[DeviceRolloutState]]:
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
    """The rollout with per-wave progress."""
    group = session.get(Group, rollout.group_id)
    counts = _state_counts(session, rollout.id or 0)
    progress = []
    total = sum(c.total() for c in counts.values())
    cumulative = 0
    for wave in sorted(counts):
        states = counts[wave]
        cumulative += states.total()
        progress.append(
            WaveProgress(
                wave=wave,
                percent=round(100 * cumulative / total) if total else 0,
                devices=states.total(),
                installed=states[DeviceRolloutState.installed],
                failed=states[DeviceRolloutState.failed],
                waiting=states[DeviceRolloutState.sent] + states[DeviceRolloutState.pending],
                rolled_back=states[DeviceRolloutState.rolled_back],
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
    )


# --- the controller -------------------------------------------------------------------


def _artifacts_of(session: Session, rows: Sequence[RolloutDevice]) -> dict[int, Artifact]:
    """The bundles ``rows`` install, by id, in one query."""
    ids = sorted({r.artifact_id for r in rows})
    if not ids:
        return {}
    found = session.exec(select(Artifact).where(col(Artifact.id).in_(ids))).all()
    return {a.id: a for a in found if a.id is not None}


class CommandSender(Protocol):
    """What the controller needs from the MQTT bridge."""

    def send_command(self, device_id: str, command: proto.Command) -> None: ...

    def send_commands(self, commands: Sequence[tuple[str, proto.Command]]) -> None: ...

    def artifact_ref(self, sha256: str) -> proto.ArtifactRef: ...


_SYSTEM = audit.Actor(name="system:rollouts", role="operator", source="cli")


@dataclass
class RolloutController:
    """Steps every running rollout; call :meth:`step` periodically (e.g. every 0.5 s)."""

    engine: Engine
    sender: CommandSender
    max_attempts: int = MAX_ATTEMPTS
    offline_grace_s: float = 60.0

    def step(self, *, now: datetime | None = None) -> None:
        """One pass over the running rollouts."""
        with session_scope(self.engine, write=False) as session:
            ids = session.exec(
                select(Rollout.id).where(Rollout.status == RolloutStatus.running)
            ).all()
            late = session.exec(
                select(RolloutDevice)
                .join(Rollout, col(Rollout.id) == col(RolloutDevice.rollout_id))
                .where(
                    Rollout.status == RolloutStatus.aborted,
                    RolloutDevice.state == DeviceRolloutState.installed,
                    col(RolloutDevice.command_id).not_like("%-back-%"),
                )
            ).all()
        for row in late:  # installed after the abort: send it back too
            self._send_rollback(row.rollout_id, row.device_id)
        for rollout_id in ids:
            if rollout_id is not None:
                try:
                    self._step_one(rollout_id, now or utcnow())
                except Exception:
                    log.exception("rollout %s: step failed; retrying on the next pass", rollout_id)

    def _has_work(self, rollout_id: int, now: datetime) -> bool:
        """Whether this pass has more to do than wait, from aggregate queries in a read
        transaction: a wave of 1,000 waiting devices is not loaded (and the write lock
        not taken) ten times a second while its devices download."""
        with session_scope(self.engine, write=False) as session:
            rollout = session.get(Rollout, rollout_id)
            if rollout is None or rollout.status is not RolloutStatus.running:
                return False
            counts = _state_counts(session, rollout_id)
            wave = counts.get(rollout.current_wave, Counter())
            if wave[DeviceRolloutState.pending] or not wave.total():
                return True
            rate = rollout.max_failure_rate
            for members in (counts.get(w) for w in range(rollout.current_wave + 1)):
                if members and members[DeviceRolloutState.failed] / members.total() > rate:
                    return True
            verdict = wave_verdict(
                size=wave.total(),
                installed=wave[DeviceRolloutState.installed],
                failed=wave[DeviceRolloutState.failed],
                max_failure_rate=rate,
            )
            if verdict != "wait":
                return True
            timed_out = session.exec(
                select(RolloutDevice.device_id)
                .where(
                    RolloutDevice.rollout_id == rollout_id,
                    RolloutDevice.wave == rollout.current_wave,
                    RolloutDevice.state == DeviceRolloutState.sent,
                    col(RolloutDevice.sent_at) <= now - timedelta(seconds=rollout.ack_timeout_s),
                )
                .limit(1)
            ).first()
            if timed_out is not None:
                return True
            unhealthy = session.exec(
                select(RolloutDevice.device_id)
                .join(Device, col(Device.id) == col(RolloutDevice.device_id))
                .where(
                    RolloutDevice.rollout_id == rollout_id,
                    RolloutDevice.wave <= rollout.current_wave,
                    RolloutDevice.state == DeviceRolloutState.installed,
                    Device.reported_status == ReportedStatus.offline,
                    col(Device.last_seen_at) < now - timedelta(seconds=self.offline_grace_s),
                )
                .limit(1)
            ).first()
            return unhealthy is not None

    def _step_one(self, rollout_id: int, now: datetime) -> None:
        if not self._has_work(rollout_id, now):
            return  # waiting: the common case while a wave downloads, kept cheap
        outbox: list[tuple[str, proto.Command]] = []
        with session_scope(self.engine, write=True) as session:
            rollout = session.get(Rollout, rollout_id)
            if rollout is None or rollout.status is not RolloutStatus.running:
                return
            rows = session.exec(
                select(RolloutDevice).where(RolloutDevice.rollout_id == rollout_id)
            ).all()
            wave_rows = [r for r in rows if r.wave == rollout.current_wave]
            with audit.exempt(session, reason="rollout progress (audited on create/finish)"):
                reference = session.get(DriftReference, rollout.model_version_id)
                bins = (
                    tuple(tuple(float(v) for v in e) for e in reference.edges) if reference else ()
                )
                # One query for the wave's bundles (not one per device: each lookup would
                # also autoflush the previous device's row, one UPDATE per device).
                artifacts = _artifacts_of(session, wave_rows)
                sends: list[dict[str, object]] = []
                for row in wave_rows:
                    self._maybe_send(session, rollout, row, now, outbox, bins, artifacts, sends)
                if sends:  # every send of this step recorded in this transaction, at once
                    session.execute(update(RolloutDevice), sends)
                self._check_health(
                    session, [r for r in rows if r.wave <= rollout.current_wave], now
                )
                session.flush()
            states = [r.state for r in wave_rows]
            verdict = wave_verdict(
                size=len(wave_rows),
                installed=states.count(DeviceRolloutState.installed),
                failed=states.count(DeviceRolloutState.failed),
                max_failure_rate=rollout.max_failure_rate,
            )
            bad_wave, failed, size = rollout.current_wave, 0, len(wave_rows)
            for wave in range(rollout.current_wave + 1):  # earlier waves' health must hold too
                members = [r for r in rows if r.wave == wave]
                lost = sum(r.state is DeviceRolloutState.failed for r in members)
                if members and lost / len(members) > rollout.max_failure_rate:
                    verdict, bad_wave, failed, size = "abort", wave, lost, len(members)
                    break
            if verdict == "wait":
                pass  # nothing to record: the common case, kept cheap
            elif verdict == "abort":
                before = public_view(session, rollout)
                rollout.status = RolloutStatus.aborted
                rollout.reason = (
                    f"wave {bad_wave + 1}: {failed} of {size} devices "
                    f"failed (over {rollout.max_failure_rate:.0%})"
                )
                rollout.finished_at = now
                for row in rows:
                    on_new = row.state is DeviceRolloutState.installed or (
                        row.state is DeviceRolloutState.failed
                        and row.error == OFFLINE_AFTER_INSTALL
                    )
                    if on_new:
                        command = proto.Command(
                            command_id=f"r{rollout_id}-back-{secrets.token_hex(6)}",
                            action="rollback",
                            rollout_id=rollout_id,
                        )
                        row.command_id = command.command_id
                        session.add(row)
                        outbox.append((row.device_id, command))
                session.add(rollout)
                session.flush()
                audit.record(
                    session,
                    actor=_SYSTEM,
                    action="rollout.abort",
                    entity_type="rollout",
                    entity_id=rollout_id,
                    before=before,
                    after=public_view(session, rollout),
                )
            else:
                before = public_view(session, rollout)
                last = max(r.wave for r in rows)
                if rollout.current_wave >= last:
                    rollout.status = RolloutStatus.succeeded
                    rollout.finished_at = now
                    action = "rollout.succeed"
                else:
                    rollout.current_wave += 1
                    action = "rollout.advance"
                session.add(rollout)
                session.flush()
                audit.record(
                    session,
                    actor=_SYSTEM,
                    action=action,
                    entity_type="rollout",
                    entity_id=rollout_id,
                    before=before,
                    after=public_view(session, rollout),
                )
        # Publish only after the commit: a command is never sent for state not recorded.
        # The wave's commands go out together (one call, a tight publish loop).
        if outbox:
            self.sender.send_commands(outbox)

    def _check_health(
        self, session: Session, wave_rows: Sequence[RolloutDevice], now: datetime
    ) -> None:
        """Health must hold: a device of the wave that installed the new model and then
        stayed offline (its Last Will, nothing heard for ``offline_grace_s``) counts as
        failed; it gets the rollback on abort, delivered by the broker when it returns.
        The grace keeps a reconnect (a dropped link, a busy host) from failing a wave."""
        installed = [r for r in wave_rows if r.state is DeviceRolloutState.installed]
        if not installed:
            return
        silent_since = now - timedelta(seconds=self.offline_grace_s)
        offline = set(
            session.exec(
                select(Device.id).where(
                    col(Device.id).in_([r.device_id for r in installed]),
                    Device.reported_status == ReportedStatus.offline,
                    col(Device.last_seen_at) < silent_since,
                )
            ).all()
        )
        for row in installed:
            if row.device_id in offline:
                row.state = DeviceRolloutState.failed
                row.error = OFFLINE_AFTER_INSTALL
                session.add(row)

    def _send_rollback(self, rollout_id: int, device_id: str) -> None:
        command = proto.Command(
            command_id=f"r{rollout_id}-back-{secrets.token_hex(6)}",
            action="rollback",
            rollout_id=rollout_id,
        )
        with session_scope(self.engine, write=True) as session:
            row = session.get(RolloutDevice, (rollout_id, device_id))
            if row is None:
                return
            row.command_id = command.command_id
            with audit.exempt(session, reason="rollback of a late install after an abort"):
                session.add(row)
                session.flush()
        self.sender.send_command(device_id, command)

    def _maybe_send(
        self,
        session: Session,
        rollout: Rollout,
        row: RolloutDevice,
        now: datetime,
        outbox: list[tuple[str, proto.Command]],
        bins: tuple[tuple[float, ...], ...],
        artifacts: dict[int, Artifact],
        sends: list[dict[str, object]],
    ) -> None:
        if row.state is DeviceRolloutState.sent and row.sent_at is not None:
            if now - row.sent_at < timedelta(seconds=rollout.ack_timeout_s):
                return
            if row.attempts >= self.max_attempts:
                row.state = DeviceRolloutState.failed
                row.error = f"no answer after {row.attempts} attempts"
                session.add(row)
                return
        elif row.state is not DeviceRolloutState.pending:
            return
        artifact = artifacts.get(row.artifact_id)
        if artifact is None:
            row.state = DeviceRolloutState.failed
            row.error = "artifact disappeared"
            session.add(row)
            return
        command = proto.Command(
            command_id=row.command_id or f"r{rollout.id}-{secrets.token_hex(6)}",
            action="install",
            rollout_id=rollout.id,
            model_version_id=rollout.model_version_id,
            artifact=self.sender.artifact_ref(artifact.sha256),
            telemetry_bins=bins,
        )
        change = {
            "command_id": command.command_id,
            "state": DeviceRolloutState.sent,
            "sent_at": now,
            "attempts": row.attempts + 1,
        }
        # Written for the whole wave in one executemany UPDATE (see _step_one); the loaded
        # row shows the new values without becoming a per-row ORM update.
        for key, value in change.items():
            set_committed_value(row, key, value)
        sends.append({"rollout_id": row.rollout_id, "device_id": row.device_id, **change})
        outbox.append((row.device_id, command))
