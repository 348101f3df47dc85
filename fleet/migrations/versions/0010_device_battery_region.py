"""``devices.battery_level``, ``battery_charging`` and ``region``: what a device last
reported (device protocol v2 telemetry ``battery``, status/telemetry ``region``), for
battery- and carbon-aware selection. NULL: never reported.

Numbered 0010 (assigned) but chained after 0011, the head when it was written.

Revision ID: 0010_device_battery_region
Revises: 0011_telemetry_digest
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010_device_battery_region"
down_revision = "0011_telemetry_digest"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.add_column(sa.Column("battery_level", sa.Float(), nullable=True))
        batch.add_column(sa.Column("battery_charging", sa.Boolean(), nullable=True))
        batch.add_column(sa.Column("region", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("region")
        batch.drop_column("battery_charging")
        batch.drop_column("battery_level")
