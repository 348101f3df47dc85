"""Drift events need agreement between devices; references are pushed when they change.

``drift_events.population`` (devices of the group on record as running the version) and
``drift_events.devices`` (each scored device's own PSI, JSON) record who agreed; events
stored before this revision keep population 0 and an empty list (they were raised from
pooled counts). ``drift_references.pushed_at``: when the MQTT service last sent the
reference's bins to the devices running the version (NULL: not yet, so it sends them).

Revision ID: 0005_drift_agreement
Revises: 0004_rollout_steering
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_drift_agreement"
down_revision = "0004_rollout_steering"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("drift_events") as batch:
        batch.add_column(sa.Column("population", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("devices", sa.JSON(), nullable=False, server_default="[]"))
    with op.batch_alter_table("drift_references") as batch:
        batch.add_column(sa.Column("pushed_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("drift_references") as batch:
        batch.drop_column("pushed_at")
    with op.batch_alter_table("drift_events") as batch:
        batch.drop_column("devices")
        batch.drop_column("population")
