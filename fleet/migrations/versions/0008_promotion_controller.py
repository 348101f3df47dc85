"""The promotion controller's columns (issue 20): each promotion's rollout and last change,
one promotion per (group, model version).

Revision ID: 0008_promotion_controller
Revises: 0007_promotion_policies
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_promotion_controller"
down_revision = "0007_promotion_policies"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("promotions") as batch:
        batch.add_column(sa.Column("rollout_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_foreign_key(
            "fk_promotions_rollout_id_rollouts", "rollouts", ["rollout_id"], ["id"]
        )
        batch.create_unique_constraint(
            "uq_promotions_group_id_model_version_id", ["group_id", "model_version_id"]
        )


def downgrade() -> None:
    with op.batch_alter_table("promotions") as batch:
        batch.drop_constraint("uq_promotions_group_id_model_version_id", type_="unique")
        batch.drop_constraint("fk_promotions_rollout_id_rollouts", type_="foreignkey")
        batch.drop_column("updated_at")
        batch.drop_column("rollout_id")
