"""Promotion policies, versioned per group, and promotions awaiting an operator (issue 20).

``promotion_policies``: one row per ``fedfleet policy apply``, the group's next version;
``promotions``: a model version on its way to a group under one policy version, with the
operator's decision when the policy's bundles are signed offline.

Revision ID: 0007_promotion_policies
Revises: 0006_device_group_name_index
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_promotion_policies"
down_revision = "0006_device_group_name_index"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "promotion_policies",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("group_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("document", sa.JSON(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("created_by", sa.String(100), nullable=False),
        sa.ForeignKeyConstraint(
            ["group_id"],
            ["groups.id"],
            name="fk_promotion_policies_group_id_groups",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_promotion_policies"),
        sa.UniqueConstraint("group_id", "version", name="uq_promotion_policies_group_id_version"),
    )
    op.create_index("ix_promotion_policies_group_id", "promotion_policies", ["group_id"])
    op.create_table(
        "promotions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("group_id", sa.Integer(), nullable=False),
        sa.Column("policy_id", sa.Integer(), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(1000), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("decided_at", _TS, nullable=True),
        sa.Column("decided_by", sa.String(100), nullable=True),
        sa.ForeignKeyConstraint(
            ["group_id"], ["groups.id"], name="fk_promotions_group_id_groups", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["policy_id"],
            ["promotion_policies.id"],
            name="fk_promotions_policy_id_promotion_policies",
        ),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_versions.id"],
            name="fk_promotions_model_version_id_model_versions",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_promotions"),
    )
    op.create_index("ix_promotions_group_id", "promotions", ["group_id"])
    op.create_index("ix_promotions_policy_id", "promotions", ["policy_id"])
    op.create_index("ix_promotions_model_version_id", "promotions", ["model_version_id"])
    op.create_index("ix_promotions_state", "promotions", ["state"])


def downgrade() -> None:
    op.drop_table("promotions")
    op.drop_table("promotion_policies")
