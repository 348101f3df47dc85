"""OTA rollouts and their devices, device telemetry, drift references and events.

Revision ID: 0003_ota_rollouts
Revises: 0002_runs_sessions
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_ota_rollouts"
down_revision = "0002_runs_sessions"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "rollouts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=False),
        sa.Column("group_id", sa.Integer(), nullable=False),
        sa.Column("waves", sa.JSON(), nullable=False),
        sa.Column("max_failure_rate", sa.Float(), nullable=False),
        sa.Column("ack_timeout_s", sa.Float(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("current_wave", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(1000), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("created_by", sa.String(100), nullable=False),
        sa.Column("finished_at", _TS, nullable=True),
        sa.ForeignKeyConstraint(["group_id"], ["groups.id"], name="fk_rollouts_group_id_groups"),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_versions.id"],
            name="fk_rollouts_model_version_id_model_versions",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_rollouts"),
    )
    op.create_index("ix_rollouts_group_id", "rollouts", ["group_id"])
    op.create_index("ix_rollouts_model_version_id", "rollouts", ["model_version_id"])
    op.create_index("ix_rollouts_status", "rollouts", ["status"])
    op.create_table(
        "rollout_devices",
        sa.Column("rollout_id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.String(32), nullable=False),
        sa.Column("wave", sa.Integer(), nullable=False),
        sa.Column("artifact_id", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("previous_model_version_id", sa.Integer(), nullable=True),
        sa.Column("command_id", sa.String(64), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("sent_at", _TS, nullable=True),
        sa.Column("acked_at", _TS, nullable=True),
        sa.Column("error", sa.String(500), nullable=False),
        sa.ForeignKeyConstraint(
            ["artifact_id"], ["artifacts.id"], name="fk_rollout_devices_artifact_id_artifacts"
        ),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.id"], name="fk_rollout_devices_device_id_devices"
        ),
        sa.ForeignKeyConstraint(
            ["rollout_id"],
            ["rollouts.id"],
            name="fk_rollout_devices_rollout_id_rollouts",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("rollout_id", "device_id", name="pk_rollout_devices"),
    )
    op.create_index("ix_rollout_devices_command_id", "rollout_devices", ["command_id"])
    op.create_table(
        "telemetry_records",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.String(32), nullable=False),
        sa.Column("received_at", _TS, nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=True),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("window_s", sa.Float(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("latency_p50_ms", sa.Float(), nullable=False),
        sa.Column("latency_p95_ms", sa.Float(), nullable=False),
        sa.Column("predictions", sa.JSON(), nullable=False),
        sa.Column("features", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.id"], name="fk_telemetry_records_device_id_devices"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_telemetry_records"),
    )
    op.create_index("ix_telemetry_records_device_id", "telemetry_records", ["device_id"])
    op.create_index(
        "ix_telemetry_records_model_version_id", "telemetry_records", ["model_version_id"]
    )
    op.create_index("ix_telemetry_records_received_at", "telemetry_records", ["received_at"])
    op.create_table(
        "drift_references",
        sa.Column("model_version_id", sa.Integer(), nullable=False),
        sa.Column("edges", sa.JSON(), nullable=False),
        sa.Column("proportions", sa.JSON(), nullable=False),
        sa.Column("samples", sa.Integer(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_versions.id"],
            name="fk_drift_references_model_version_id_model_versions",
        ),
        sa.PrimaryKeyConstraint("model_version_id", name="pk_drift_references"),
    )
    op.create_table(
        "drift_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=False),
        sa.Column("group_id", sa.Integer(), nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("method", sa.String(16), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("per_feature", sa.JSON(), nullable=False),
        sa.Column("samples", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["group_id"], ["groups.id"], name="fk_drift_events_group_id_groups"
        ),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_versions.id"],
            name="fk_drift_events_model_version_id_model_versions",
        ),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name="fk_drift_events_run_id_runs"),
        sa.PrimaryKeyConstraint("id", name="pk_drift_events"),
    )
    op.create_index("ix_drift_events_model_version_id", "drift_events", ["model_version_id"])


def downgrade() -> None:
    op.drop_table("drift_events")
    op.drop_table("drift_references")
    op.drop_table("telemetry_records")
    op.drop_table("rollout_devices")
    op.drop_table("rollouts")
