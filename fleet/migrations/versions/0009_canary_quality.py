"""Model-aware canaries: quality signals stored, quality thresholds per rollout.

``telemetry_records.errors``: inference calls of the window that raised (0 for rows
stored before). ``feedback_records``: one row per device ``feedback`` message (label
counts per true class; ``labelled``/``correct`` their sums). ``rollouts``: the quality
thresholds the controller checks after a wave installed (NULL: that signal is not
checked; rollouts created before keep them NULL, so they behave as before), the soak
time per wave, and the evidence a verdict needs.

Revision ID: 0009_canary_quality
Revises: 0008_promotion_controller
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_canary_quality"
down_revision = "0008_promotion_controller"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)
_THRESHOLDS = (
    "max_accuracy_drop_points",
    "max_latency_ratio",
    "max_error_rate",
    "max_prediction_shift",
)


def upgrade() -> None:
    with op.batch_alter_table("telemetry_records") as batch:
        batch.add_column(sa.Column("errors", sa.Integer(), nullable=False, server_default="0"))
    op.create_table(
        "feedback_records",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.String(32), nullable=False),
        sa.Column("received_at", _TS, nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=True),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("window_s", sa.Float(), nullable=False),
        sa.Column("labelled", sa.BigInteger(), nullable=False),
        sa.Column("correct", sa.BigInteger(), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.id"], name="fk_feedback_records_device_id_devices"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_feedback_records"),
    )
    op.create_index("ix_feedback_records_device_id", "feedback_records", ["device_id"])
    op.create_index(
        "ix_feedback_records_model_version_id", "feedback_records", ["model_version_id"]
    )
    op.create_index("ix_feedback_records_received_at", "feedback_records", ["received_at"])
    with op.batch_alter_table("rollouts") as batch:
        for name in _THRESHOLDS:
            batch.add_column(sa.Column(name, sa.Float(), nullable=True))
        batch.add_column(sa.Column("soak_s", sa.Float(), nullable=False, server_default="0"))
        batch.add_column(
            sa.Column("min_quality_devices", sa.Integer(), nullable=False, server_default="2")
        )
        batch.add_column(
            sa.Column("min_quality_samples", sa.Integer(), nullable=False, server_default="200")
        )


def downgrade() -> None:
    with op.batch_alter_table("rollouts") as batch:
        for name in ("min_quality_samples", "min_quality_devices", "soak_s", *_THRESHOLDS):
            batch.drop_column(name)
    op.drop_index("ix_feedback_records_received_at", table_name="feedback_records")
    op.drop_index("ix_feedback_records_model_version_id", table_name="feedback_records")
    op.drop_index("ix_feedback_records_device_id", table_name="feedback_records")
    op.drop_table("feedback_records")
    with op.batch_alter_table("telemetry_records") as batch:
        batch.drop_column("errors")
