"""Federated runs and their rounds, model lineage to runs (source run and round),
dashboard sessions, and the status a device (or its MQTT Last Will) reported.

Revision ID: 0002_runs_sessions
Revises: 0001_core
Create Date: 2025-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_runs_sessions"
down_revision = "0001_core"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("name", sa.String(1000), nullable=False),
        sa.Column("task", sa.String(63), nullable=False),
        sa.Column("strategy", sa.String(63), nullable=False),
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("created_by", sa.String(100), nullable=False),
        sa.Column("started_at", _TS, nullable=True),
        sa.Column("finished_at", _TS, nullable=True),
        sa.Column("final_model_version_id", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_runs"),
        sa.ForeignKeyConstraint(
            ["final_model_version_id"],
            ["model_versions.id"],
            name="fk_runs_final_model_version_id_model_versions",
        ),
    )
    op.create_index("ix_runs_task", "runs", ["task"])
    op.create_index("ix_runs_status", "runs", ["status"])
    op.create_table(
        "run_rounds",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("accuracy", sa.Float(), nullable=True),
        sa.Column("loss", sa.Float(), nullable=True),
        sa.Column("duration_s", sa.Float(), nullable=True),
        sa.Column("epsilon", sa.Float(), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("participants", sa.JSON(), nullable=False),
        sa.Column("recorded_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("run_id", "round", name="pk_run_rounds"),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name="fk_run_rounds_run_id_runs", ondelete="CASCADE"
        ),
    )
    op.create_table(
        "dashboard_sessions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("session_hash", sa.String(64), nullable=False),
        sa.Column("token_id", sa.Integer(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("expires_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_dashboard_sessions"),
        sa.UniqueConstraint("session_hash", name="uq_dashboard_sessions_session_hash"),
        sa.ForeignKeyConstraint(
            ["token_id"],
            ["api_tokens.id"],
            name="fk_dashboard_sessions_token_id_api_tokens",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_dashboard_sessions_token_id", "dashboard_sessions", ["token_id"])
    # Existing devices have reported nothing yet: NULL, derived status unchanged.
    op.add_column("devices", sa.Column("reported_status", sa.String(16), nullable=True))
    # Lineage: which run (and round) produced a model version. Existing versions: none.
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("source_run_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("source_round", sa.Integer(), nullable=True))
        batch.create_index("ix_model_versions_source_run_id", ["source_run_id"])
        batch.create_foreign_key(
            "fk_model_versions_source_run_id_runs", "runs", ["source_run_id"], ["id"]
        )


def downgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_constraint("fk_model_versions_source_run_id_runs", type_="foreignkey")
        batch.drop_index("ix_model_versions_source_run_id")
        batch.drop_column("source_round")
        batch.drop_column("source_run_id")
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("reported_status")
    op.drop_table("dashboard_sessions")
    op.drop_table("run_rounds")
    op.drop_table("runs")
