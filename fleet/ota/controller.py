"""The rollout controller: send installs wave by wave, advance or abort, roll back.

:class:`RolloutController`, run by the fleet's MQTT service, steps every running rollout
(created and viewed by :mod:`fleet.crud.rollouts`):

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

A device of a sent wave that is retired, or silent (no heartbeat, no answer) for
``release_after_s`` since its install went out, is **released**: counted neither installed
nor failed, so one dead device no longer holds a wave for ``max_attempts`` ack timeouts
(:mod:`fleet.ota.release`).
An operator steers a rollout through the API (:mod:`fleet.crud.rollouts`): a **paused**
rollout is skipped here (answers are still recorded by the bridge); an **aborted** one
gets rollbacks for the devices of waves ``>= rollout.rollback_from_wave`` that installed
the new model (the operator's choice; none when it is NULL), also for installs that are
acknowledged after the abort.

State lives in the database (``rollouts``, ``rollout_devices``), so the service can
restart at any step.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal, Protocol, cast

from sqlalchemy import Engine, and_, or_, update
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from edge_client.protocol import mqtt as proto
from fleet import audit
from fleet.crud.rollouts import change_rollout, state_counts
from fleet.db import KeyedUpdate, session_scope
from fleet.models.common import utcnow
from fleet.models.devices import Device, ReportedStatus
from fleet.models.ota import (
    DeviceRolloutState,
    DriftReference,
    Rollout,
    RolloutDevice,
    RolloutStatus,
)
from fleet.models.registry import Artifact
from fleet.ota.canary_signals import thresholds_of, wave_quality
from fleet.ota.release import RELEASE_AFTER_S, releasable, release

log = logging.getLogger(__name__)

Verdict = Literal["wait", "advance", "abort"]
MAX_ATTEMPTS = 3
OFFLINE_AFTER_INSTALL = "went offline after installing the new model"
NO_ANSWER = "no answer after"  # how an install that timed out starts its error


def wave_verdict(*, size: int, installed: int, failed: int, max_failure_rate: float) -> Verdict:
    """Abort when ``failed / size > max_failure_rate``; advance when all answered."""
    if size < 1:
        raise ValueError("a wave has at least one device")
    if failed / size > max_failure_rate:
        return "abort"
    if installed + failed >= size:
        return "advance"
    return "wait"


def _artifacts_of(session: Session, rows: Sequence[_Member]) -> dict[int, Artifact]:
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
    release_after_s: float = RELEASE_AFTER_S
    quality_every_s: float = 1.0  # a gated wave's quality is compared this often
    _quality_at: dict[int, float] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.release_after_s <= 0:
            raise ValueError(
                f"release_after_s must be positive, got {self.release_after_s}; "
                f"e.g. {RELEASE_AFTER_S} (twice the heartbeat timeout)"
            )

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
                    col(Rollout.rollback_from_wave).is_not(None),
                    col(RolloutDevice.wave) >= col(Rollout.rollback_from_wave),
                    or_(
                        col(RolloutDevice.state) == DeviceRolloutState.installed,
                        and_(
                            col(RolloutDevice.state) == DeviceRolloutState.failed,
                            col(RolloutDevice.error) == OFFLINE_AFTER_INSTALL,
                        ),
                    ),
                    or_(
                        col(RolloutDevice.command_id).is_(None),
                        col(RolloutDevice.command_id).not_like("%-back-%"),
                    ),
                )
            ).all()
        # On the new model after an abort that rolls back (an operator's abort, or an
        # install acknowledged after the abort): send it back, all in one transaction.
        if late:
            self._send_rollbacks([(row.rollout_id, row.device_id) for row in late])
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
            counts = state_counts(session, rollout_id)
            wave = counts.get(rollout.current_wave, Counter())
            if wave[DeviceRolloutState.pending] or not wave.total():
                return True
            rate = rollout.max_failure_rate
            for members in (counts.get(w) for w in range(rollout.current_wave + 1)):
                counted = members.total() - members[DeviceRolloutState.released] if members else 0
                if counted and members and members[DeviceRolloutState.failed] / counted > rate:
                    return True
            size = wave.total() - wave[DeviceRolloutState.released]
            if size < 1:
                return True  # every device released: advance
            verdict = wave_verdict(
                size=size,
                installed=wave[DeviceRolloutState.installed],
                failed=wave[DeviceRolloutState.failed],
                max_failure_rate=rate,
            )
            if verdict == "abort" or (verdict == "advance" and self._quality_due(rollout)):
                return True
            if releasable(session, rollout, now, bound_s=self.release_after_s, limit=1):
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
            # Locked: an operator's pause or abort (fleet.crud.rollouts) waits for this
            # pass, or this pass sees it, never overwrites it.
            rollout = session.get(Rollout, rollout_id, with_for_update=True)
            if rollout is None or rollout.status is not RolloutStatus.running:
                return
            with audit.exempt(session, reason="rollout progress (audited on create/finish)"):
                release(session, rollout, now, bound_s=self.release_after_s)
            # Core rows, not ORM objects (building those was a fifth of a send's CPU);
            # what changes is written in bulk below (sends) and at the end (the rest).
            rows = [
                _Member(*r)
                for r in session.connection().execute(
                    _MEMBERS.where(_RD.c.rollout_id == rollout_id)
                )
            ]
            changed: dict[tuple[int, str], _Member] = {}
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
                    self._maybe_send(rollout, row, now, outbox, bins, artifacts, sends, changed)
                if sends:  # every send of this step recorded in this transaction, at once
                    _SENT.execute(session.connection(), sends)
                self._check_health(
                    session, [r for r in rows if r.wave <= rollout.current_wave], now, changed
                )
            # Released devices count neither way: the verdict is over the rest.
            states = [r.state for r in wave_rows if r.state is not DeviceRolloutState.released]
            verdict: Verdict = (
                wave_verdict(
                    size=len(states),
                    installed=states.count(DeviceRolloutState.installed),
                    failed=states.count(DeviceRolloutState.failed),
                    max_failure_rate=rollout.max_failure_rate,
                )
                if states
                else "advance"
            )
            bad_wave, failed, size = rollout.current_wave, 0, len(states)
            for wave in range(rollout.current_wave + 1):  # earlier waves' health must hold too
                members = [
                    r for r in rows if r.wave == wave and r.state is not DeviceRolloutState.released
                ]
                lost = sum(r.state is DeviceRolloutState.failed for r in members)
                if members and lost / len(members) > rollout.max_failure_rate:
                    verdict, bad_wave, failed, size = "abort", wave, lost, len(members)
                    break
            reason = (
                f"wave {bad_wave + 1}: {failed} of {size} devices "
                f"failed (over {rollout.max_failure_rate:.0%})"
            )
            if verdict == "advance" and _gated(rollout):
                verdict, reason = self._quality_gate(session, rollout, rows, now)
            if verdict == "wait":
                pass  # nothing to record: the common case, kept cheap
            elif verdict == "abort":
                for row in rows:
                    on_new = row.state is DeviceRolloutState.installed or (
                        row.state is DeviceRolloutState.failed
                        and row.error == OFFLINE_AFTER_INSTALL
                    )
                    if on_new:
                        command = _rollback_command(rollout_id)
                        row.command_id = command.command_id
                        changed[row.rollout_id, row.device_id] = row
                        outbox.append((row.device_id, command))
                change_rollout(
                    session,
                    rollout,
                    "rollout.abort",
                    _SYSTEM,
                    status=RolloutStatus.aborted,
                    reason=reason,
                    finished_at=now,
                    rollback_from_wave=0,  # every wave's installed devices go back
                )
            elif rollout.current_wave >= max(r.wave for r in rows):
                change_rollout(
                    session,
                    rollout,
                    "rollout.succeed",
                    _SYSTEM,
                    status=RolloutStatus.succeeded,
                    finished_at=now,
                )
            else:
                change_rollout(
                    session,
                    rollout,
                    "rollout.advance",
                    _SYSTEM,
                    current_wave=rollout.current_wave + 1,
                )
            if changed:  # failed, unhealthy, rolled back: one UPDATE, in this transaction
                _CHANGED.execute(
                    session.connection(),
                    [
                        {
                            "rollout_id": r.rollout_id,
                            "device_id": r.device_id,
                            "state": r.state,
                            "error": r.error,
                            "command_id": r.command_id,
                        }
                        for r in changed.values()
                    ],
                )
        # Publish only after the commit: a command is never sent for state not recorded.
        # The wave's commands go out together (one call, a tight publish loop).
        if outbox:
            self.sender.send_commands(outbox)

    def _quality_due(self, rollout: Rollout) -> bool:
        """Whether a wave that answered may advance now: always for an ungated rollout;
        for a gated one (thresholds or soak) every ``quality_every_s`` (each check reads
        the period's reports)."""
        if not _gated(rollout) or rollout.id is None:
            return True
        at = time.monotonic()
        if at < self._quality_at.get(rollout.id, 0.0):
            return False
        self._quality_at[rollout.id] = at + self.quality_every_s
        return True

    def _quality_gate(
        self, session: Session, rollout: Rollout, rows: Sequence[_Member], now: datetime
    ) -> tuple[Verdict, str]:
        """A wave whose installs all answered: abort on a quality regression against the
        devices still on the previous version (:mod:`fleet.ota.canary_signals`), wait
        while it soaks, else advance."""
        wave = [
            r
            for r in rows
            if r.wave == rollout.current_wave and r.state is not DeviceRolloutState.released
        ]
        sent = [r.sent_at for r in wave if r.sent_at is not None]
        since = min(sent) if sent else rollout.created_at
        if thresholds_of(rollout).enabled:
            # duck-typed: it reads device_id, wave, state and acked_at of each row
            verdict = wave_quality(session, rollout, cast("list[RolloutDevice]", rows), since=since)
            if verdict.regressed:
                exposed = sum(
                    r.state is DeviceRolloutState.installed
                    for r in rows
                    if r.wave <= rollout.current_wave
                )
                reason = (
                    f"wave {rollout.current_wave + 1}: quality regression on {exposed} of "
                    f"{len(rows)} devices against the previous version: {verdict.reason}"
                )
                return "abort", reason[:1000]
        acks = [r.acked_at for r in wave if r.acked_at is not None]
        installed_at = max(acks) if acks else now
        if (now - installed_at).total_seconds() < rollout.soak_s:
            return "wait", ""
        return "advance", ""

    def _check_health(
        self,
        session: Session,
        wave_rows: Sequence[_Member],
        now: datetime,
        changed: dict[tuple[int, str], _Member],
    ) -> None:
        """Health must hold: a device of the wave that installed the new model and then
        stayed offline (its Last Will, nothing heard for ``offline_grace_s``) counts as
        failed; it gets the rollback on abort, delivered by the broker when it returns.
        The grace keeps a reconnect (a dropped link, a busy host) from failing a wave."""
        installed = [r for r in wave_rows if r.state is DeviceRolloutState.installed]
        if not installed:
            return
        silent_since = now - timedelta(seconds=self.offline_grace_s)
        # A join, not an IN list of the wave's thousand ids (a thousand placeholders for
        # the driver to convert on every pass); only the loaded installed rows count.
        offline = set(
            session.exec(
                select(Device.id)
                .join(RolloutDevice, col(RolloutDevice.device_id) == col(Device.id))
                .where(
                    RolloutDevice.rollout_id == installed[0].rollout_id,
                    RolloutDevice.state == DeviceRolloutState.installed,
                    Device.reported_status == ReportedStatus.offline,
                    col(Device.last_seen_at) < silent_since,
                )
            ).all()
        )
        for row in installed:
            if row.device_id in offline:
                row.state = DeviceRolloutState.failed
                row.error = OFFLINE_AFTER_INSTALL
                changed[row.rollout_id, row.device_id] = row

    def _send_rollbacks(self, targets: Sequence[tuple[int, str]]) -> None:
        """Roll ``(rollout_id, device_id)`` back: their command ids recorded in one
        statement and transaction, then the commands published in one call (costs per
        wave, not per device: a 1,000-device abort is one commit, not 1,000)."""
        outbox = [(device_id, _rollback_command(rollout_id)) for rollout_id, device_id in targets]
        with (
            session_scope(self.engine, write=True) as session,
            audit.exempt(session, reason="rollback of a late install after an abort"),
        ):
            session.execute(  # bulk UPDATE by primary key
                update(RolloutDevice),
                [
                    {"rollout_id": r_id, "device_id": d_id, "command_id": c.command_id}
                    for (r_id, _), (d_id, c) in zip(targets, outbox, strict=True)
                ],
            )
        self.sender.send_commands(outbox)

    def _maybe_send(
        self,
        rollout: Rollout,
        row: _Member,
        now: datetime,
        outbox: list[tuple[str, proto.Command]],
        bins: tuple[tuple[float, ...], ...],
        artifacts: dict[int, Artifact],
        sends: list[dict[str, object]],
        changed: dict[tuple[int, str], _Member],
    ) -> None:
        if row.state is DeviceRolloutState.sent and row.sent_at is not None:
            if now - row.sent_at < timedelta(seconds=rollout.ack_timeout_s):
                return
            if row.attempts >= self.max_attempts:
                row.state = DeviceRolloutState.failed
                row.error = f"{NO_ANSWER} {row.attempts} attempts"
                changed[row.rollout_id, row.device_id] = row
                return
        elif row.state is not DeviceRolloutState.pending:
            return
        artifact = artifacts.get(row.artifact_id)
        if artifact is None:
            row.state = DeviceRolloutState.failed
            row.error = "artifact disappeared"
            changed[row.rollout_id, row.device_id] = row
            return
        command = proto.Command(
            command_id=row.command_id or f"r{rollout.id}-{secrets.token_hex(6)}",
            action="install",
            rollout_id=rollout.id,
            model_version_id=rollout.model_version_id,
            artifact=self.sender.artifact_ref(artifact.sha256),
            telemetry_bins=bins,
        )
        # Written for the whole wave in one UPDATE (see _step_one); the row shows it too.
        row.command_id, row.state = command.command_id, DeviceRolloutState.sent
        row.sent_at, row.attempts = now, row.attempts + 1
        sends.append(
            {
                "rollout_id": row.rollout_id,
                "device_id": row.device_id,
                "command_id": row.command_id,
                "state": row.state,
                "sent_at": now,
                "attempts": row.attempts,
            }
        )
        outbox.append((row.device_id, command))


# The wave's sends as one UPDATE by primary key (Core: the ORM's bulk update by primary
# key costs about 0.1 ms of Python per row; on PostgreSQL one statement over arrays, not
# an executemany of one execution per row: fleet.db.KeyedUpdate).
_SENT = KeyedUpdate(
    RolloutDevice.__table__,  # type: ignore[attr-defined]
    ("rollout_id", "device_id"),
    ("command_id", "state", "sent_at", "attempts"),
)


@dataclass(slots=True)
class _Member:
    """A device row of a rollout as a pass steps it (read with Core; see _step_one)."""

    rollout_id: int
    device_id: str
    wave: int
    artifact_id: int
    state: DeviceRolloutState
    command_id: str | None
    attempts: int
    sent_at: datetime | None
    acked_at: datetime | None
    error: str


_RD = RolloutDevice.__table__  # type: ignore[attr-defined]
_MEMBERS = sa_select(
    *(_RD.c[name] for name in _Member.__dataclass_fields__)  # the fields' order
)
# A pass's other changes (failed, unhealthy, rolled back), one UPDATE by primary key.
_CHANGED = KeyedUpdate(_RD, ("rollout_id", "device_id"), ("state", "error", "command_id"))


def _gated(rollout: Rollout) -> bool:
    """Whether ``rollout`` watches its waves' quality (thresholds) or soaks them."""
    return rollout.soak_s > 0 or thresholds_of(rollout).enabled


def _rollback_command(rollout_id: int) -> proto.Command:
    """A fresh rollback command of ``rollout_id`` (its id marks it as one: ``-back-``)."""
    return proto.Command(
        command_id=f"r{rollout_id}-back-{secrets.token_hex(6)}",
        action="rollback",
        rollout_id=rollout_id,
    )
