"""Send a model version's drift reference bins to the devices running it when it changes.

A reference reaches a device inside the install command (``telemetry_bins``). When an
operator sets a new one (``PUT /api/v1/models/{id}/drift-reference``, which clears
``DriftReference.pushed_at``), the MQTT service sends every device the fleet has on record
as running that version a ``ping`` command carrying the version id and the new
``telemetry_bins`` (the bridge's command path, QoS 1: an offline device gets it when it
reconnects), then stamps ``pushed_at``. A device adopts the bins only when the command's
``model_version_id`` is the version it runs (docs/mqtt.md, "Drift").
"""

from __future__ import annotations

import uuid
from typing import Protocol

from sqlalchemy import Engine, or_
from sqlmodel import col, select

from edge_client.protocol import mqtt as proto
from fleet import audit
from fleet.db import session_scope
from fleet.models.common import utcnow
from fleet.models.devices import Device
from fleet.models.ota import DriftReference, check_reference


class CommandSender(Protocol):
    def send_commands(self, commands: list[tuple[str, proto.Command]]) -> None: ...


def push_references(engine: Engine, sender: CommandSender) -> int:
    """Send each changed (or never sent) valid reference to the devices running its
    version; returns the number of commands sent. A reference that breaks
    ``check_reference`` is left for the drift check to report (never sent)."""
    outbox: list[tuple[str, proto.Command]] = []
    with session_scope(engine, write=True) as session:
        changed = session.exec(
            select(DriftReference).where(
                or_(
                    col(DriftReference.pushed_at).is_(None),
                    col(DriftReference.pushed_at) < col(DriftReference.created_at),
                )
            )
        ).all()
        with audit.exempt(session, reason="delivery stamp of a drift reference (audited on set)"):
            for reference in changed:
                try:
                    check_reference(reference.edges, reference.proportions)
                except ValueError:
                    continue
                bins = tuple(tuple(float(v) for v in e) for e in reference.edges)
                devices = session.exec(
                    select(Device.id).where(
                        Device.model_version_id == reference.model_version_id,
                        col(Device.retired_at).is_(None),
                    )
                ).all()
                for device_id in devices:
                    outbox.append(
                        (
                            device_id,
                            proto.Command(
                                command_id=f"ref-{uuid.uuid4().hex}",
                                action="ping",
                                model_version_id=reference.model_version_id,
                                telemetry_bins=bins,
                            ),
                        )
                    )
                reference.pushed_at = utcnow()
                session.add(reference)
            session.flush()
    if outbox:
        sender.send_commands(outbox)
    return len(outbox)
