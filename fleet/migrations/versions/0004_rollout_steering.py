"""Rollouts an operator steers: which waves an abort rolls back.

``rollouts.rollback_from_wave``: after an abort, devices of waves >= this one that installed
the new model are sent a rollback; NULL when the operator kept them on it. Rollouts aborted
before this revision rolled back every wave (0). The new states (rollout ``paused``, device
``released``) fit the existing VARCHAR(16) columns.

Revision ID: 0004_rollout_steering
Revises: 0003_ota_rollouts
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_rollout_steering"
down_revision = "0003_ota_rollouts"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("rollouts") as batch:
        batch.add_column(sa.Column("rollback_from_wave", sa.Integer(), nullable=True))
    op.execute("UPDATE rollouts SET rollback_from_wave = 0 WHERE status = 'aborted'")


def downgrade() -> None:
    op.execute("UPDATE rollouts SET status = 'running' WHERE status = 'paused'")
    op.execute("UPDATE rollout_devices SET state = 'failed' WHERE state = 'released'")
    with op.batch_alter_table("rollouts") as batch:
        batch.drop_column("rollback_from_wave")
