"""Releasing devices from a rollout wave: one dead device no longer holds a rollout.

A device of a sent wave that has not answered is **released** (state ``released``, counted
neither installed nor failed; the wave's verdict is computed over the rest) when it is
retired, or when it has been silent — no heartbeat, no message, never seen at all — for
``bound_s`` since its install went out. The bound defaults to twice the fleet's heartbeat
timeout (``FleetSettings.release_after_s``), so a device that downloads slowly but keeps
sending heartbeats is still waited for. :class:`~fleet.ota.controller.RolloutController`
calls these inside its step; an install acknowledged later still counts (the bridge marks
a released device ``installed``).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import and_, or_, update
from sqlmodel import Session, col, select

from fleet.models.devices import Device
from fleet.models.ota import DeviceRolloutState, Rollout, RolloutDevice

log = logging.getLogger(__name__)

#: Default bound after which a silent device is released from its wave: twice the
#: fleet's default heartbeat timeout (``FleetSettings.offline_after_s``, 90 s).
RELEASE_AFTER_S = 180.0
_UNANSWERED = (DeviceRolloutState.pending, DeviceRolloutState.sent)


def releasable(
    session: Session, rollout: Rollout, now: datetime, *, bound_s: float, limit: int | None = None
) -> list[tuple[str, bool]]:
    """(device id, retired) of the unanswered devices of the sent waves that are retired,
    or silent for ``bound_s`` seconds since their install went out (a device never seen
    at all included)."""
    silent_since = now - timedelta(seconds=bound_s)
    statement = (
        select(RolloutDevice.device_id, col(Device.retired_at).is_not(None))
        .join(Device, col(Device.id) == col(RolloutDevice.device_id))
        .where(
            col(RolloutDevice.rollout_id) == rollout.id,
            col(RolloutDevice.wave) <= rollout.current_wave,
            col(RolloutDevice.state).in_(_UNANSWERED),
            or_(
                col(Device.retired_at).is_not(None),
                and_(
                    col(RolloutDevice.sent_at) < silent_since,
                    or_(
                        col(Device.last_seen_at).is_(None),
                        col(Device.last_seen_at) < silent_since,
                    ),
                ),
            ),
        )
    )
    if limit is not None:
        statement = statement.limit(limit)
    return [(device_id, bool(retired)) for device_id, retired in session.exec(statement)]


def release(session: Session, rollout: Rollout, now: datetime, *, bound_s: float) -> None:
    """Mark the releasable devices ``released``, saying why in their ``error``; call it
    before the wave's rows are loaded (it writes with bulk UPDATEs)."""
    found = releasable(session, rollout, now, bound_s=bound_s)
    for retired in (True, False):
        ids = [d for d, r in found if r is retired]
        if not ids:
            continue
        why = (
            "released: the device was retired"
            if retired
            else f"released: silent for over {bound_s:g} s"
        )
        session.execute(
            update(RolloutDevice)
            .where(
                col(RolloutDevice.rollout_id) == rollout.id,
                col(RolloutDevice.device_id).in_(ids),
            )
            .values(state=DeviceRolloutState.released, error=why)
            .execution_options(synchronize_session=False)
        )
        log.info("rollout %s: %s %s", rollout.id, why, ", ".join(ids))
