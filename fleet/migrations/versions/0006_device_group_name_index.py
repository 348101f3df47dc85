"""An index on ``devices (group_id, name)``: a page of a group's devices, by name, is read
straight from the index instead of sorting the whole group (keyset pagination).

Revision ID: 0006_device_group_name_index
Revises: 0005_drift_agreement
Create Date: 2026-12-04
"""

from __future__ import annotations

from alembic import op

revision = "0006_device_group_name_index"
down_revision = "0005_drift_agreement"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_devices_group_id_name", "devices", ["group_id", "name"])


def downgrade() -> None:
    op.drop_index("ix_devices_group_id_name", table_name="devices")
