"""``telemetry_records.digest``: a telemetry message stored once however often it arrives.

Replicated ``fleet mqtt`` processes (``--replica``) acknowledge a device message only
after it is committed, so a bridge killed between the commit and the acknowledgement
gets it again from the broker; the digest of the message with a unique index on
``(device_id, digest)`` turns that second delivery into ``ON CONFLICT DO NOTHING``.
NULL (one process, no replicas) never conflicts.

Revision ID: 0011_telemetry_digest
Revises: 0009_canary_quality
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011_telemetry_digest"
down_revision = "0009_canary_quality"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("telemetry_records") as batch:
        batch.add_column(sa.Column("digest", sa.String(length=32), nullable=True))
    op.create_index(
        "ux_telemetry_records_device_id_digest",
        "telemetry_records",
        ["device_id", "digest"],
        unique=True,
    )


def downgrade() -> None:
    op.drop_index("ux_telemetry_records_device_id_digest", table_name="telemetry_records")
    with op.batch_alter_table("telemetry_records") as batch:
        batch.drop_column("digest")
