"""``feedback_records.digest``: a feedback message stored once however often it arrives;
``model_versions.reference_predictions``: a version's reference prediction distribution.

The same as 0011 for telemetry: replicated ``fleet mqtt`` processes (``--replica``) both
receive a message a device published once (or one of them gets it again after being
killed between commit and acknowledgement); the digest of the decoded message with a
unique index on ``(device_id, digest)`` turns the second copy into ``ON CONFLICT DO
NOTHING``, so canary accuracy counts each labelled sample once. NULL (one process, no
replicas) never conflicts.

``reference_predictions`` (JSON ``{"class": count}``, NULL for versions built before or
elsewhere): the predicted classes of the version's first bundle built by the promotion
controller, on the accuracy gate's held-out set; the canary's predictions are compared
with it (fleet/ota/canary_quality.py), else with the previous version's live traffic.

Revision ID: 0012_feedback_digest
Revises: 0011_telemetry_digest
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012_feedback_digest"
down_revision = "0010_device_battery_region"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("feedback_records") as batch:
        batch.add_column(sa.Column("digest", sa.String(length=32), nullable=True))
    op.create_index(
        "ux_feedback_records_device_id_digest",
        "feedback_records",
        ["device_id", "digest"],
        unique=True,
    )
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("reference_predictions", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_column("reference_predictions")
    op.drop_index("ux_feedback_records_device_id_digest", table_name="feedback_records")
    with op.batch_alter_table("feedback_records") as batch:
        batch.drop_column("digest")
