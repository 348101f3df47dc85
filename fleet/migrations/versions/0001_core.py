"""Core fleet schema: tokens, groups, tags, devices, model registry, audit log.

Revision ID: 0001_core
Revises:
Create Date: 2025-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_core"
down_revision = None
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "api_tokens",
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("prefix", sa.String(12), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("created_by", sa.String(100), nullable=False),
        sa.Column("expires_at", _TS, nullable=True),
        sa.Column("revoked_at", _TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_api_tokens"),
        sa.UniqueConstraint("token_hash", name="uq_api_tokens_token_hash"),
    )
    op.create_table(
        "groups",
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("description", sa.String(1000), nullable=False),
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_groups"),
    )
    op.create_index("ix_groups_name", "groups", ["name"], unique=True)
    op.create_table(
        "tags",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(63), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_tags"),
    )
    op.create_index("ix_tags_name", "tags", ["name"], unique=True)
    op.create_table(
        "model_versions",
        sa.Column("task", sa.String(63), nullable=False),
        sa.Column("name", sa.String(1000), nullable=False),
        sa.Column("description", sa.String(1000), nullable=False),
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("stage", sa.String(16), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("parent_id", sa.Integer(), nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("created_by", sa.String(100), nullable=False),
        sa.Column("stage_changed_at", _TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_model_versions"),
        sa.ForeignKeyConstraint(
            ["parent_id"], ["model_versions.id"], name="fk_model_versions_parent_id_model_versions"
        ),
    )
    op.create_index("ix_model_versions_task", "model_versions", ["task"])
    op.create_index("ix_model_versions_stage", "model_versions", ["stage"])
    op.create_table(
        "artifacts",
        sa.Column("format", sa.String(16), nullable=False),
        sa.Column("target", sa.String(63), nullable=False),
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=False),
        sa.Column("filename", sa.String(255), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("signature", sa.String(200), nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("created_by", sa.String(100), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_artifacts"),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_versions.id"],
            name="fk_artifacts_model_version_id_model_versions",
        ),
        sa.UniqueConstraint(
            "model_version_id",
            "format",
            "target",
            name="uq_artifacts_model_version_id_format_target",
        ),
    )
    op.create_index("ix_artifacts_model_version_id", "artifacts", ["model_version_id"])
    op.create_index("ix_artifacts_sha256", "artifacts", ["sha256"])
    op.create_table(
        "devices",
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("hardware_target", sa.String(63), nullable=False),
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("group_id", sa.Integer(), nullable=True),
        sa.Column("mqtt_username", sa.String(64), nullable=False),
        sa.Column("mqtt_password_hash", sa.String(200), nullable=True),
        sa.Column("enrolled_at", _TS, nullable=False),
        sa.Column("enrolled_by", sa.String(100), nullable=False),
        sa.Column("last_seen_at", _TS, nullable=True),
        sa.Column("model_version_id", sa.Integer(), nullable=True),
        sa.Column("retired_at", _TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_devices"),
        sa.ForeignKeyConstraint(["group_id"], ["groups.id"], name="fk_devices_group_id_groups"),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_versions.id"],
            name="fk_devices_model_version_id_model_versions",
        ),
        sa.UniqueConstraint("name", name="uq_devices_name"),
        sa.UniqueConstraint("mqtt_username", name="uq_devices_mqtt_username"),
    )
    op.create_index("ix_devices_group_id", "devices", ["group_id"])
    op.create_index("ix_devices_hardware_target", "devices", ["hardware_target"])
    op.create_index("ix_devices_last_seen_at", "devices", ["last_seen_at"])
    op.create_index("ix_devices_model_version_id", "devices", ["model_version_id"])
    op.create_table(
        "device_tags",
        sa.Column("device_id", sa.String(32), nullable=False),
        sa.Column("tag_id", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("device_id", "tag_id", name="pk_device_tags"),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.id"],
            name="fk_device_tags_device_id_devices",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tag_id"], ["tags.id"], name="fk_device_tags_tag_id_tags", ondelete="CASCADE"
        ),
    )
    op.create_index("ix_device_tags_tag_id", "device_tags", ["tag_id"])
    op.create_table(
        "audit_events",
        sa.Column("at", _TS, nullable=False),
        sa.Column("actor", sa.String(100), nullable=False),
        sa.Column("actor_role", sa.String(16), nullable=False),
        sa.Column("action", sa.String(63), nullable=False),
        sa.Column("entity_type", sa.String(32), nullable=False),
        sa.Column("entity_id", sa.String(64), nullable=False),
        sa.Column("before", sa.JSON(), nullable=True),
        sa.Column("after", sa.JSON(), nullable=True),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("id", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_events"),
    )
    for column in ("at", "actor", "action", "entity_type", "entity_id"):
        op.create_index(f"ix_audit_events_{column}", "audit_events", [column])
    _create_append_only_triggers()


def _create_append_only_triggers() -> None:
    """Make the audit log append-only in the database itself."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE FUNCTION fleet_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'audit_events is append-only'; END $$"
        )
        op.execute(
            "CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events "
            "FOR EACH ROW EXECUTE FUNCTION fleet_audit_append_only()"
        )
    else:
        for verb in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER audit_events_no_{verb.lower()} BEFORE {verb} ON audit_events "
                "BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END"
            )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER audit_events_append_only ON audit_events")
        op.execute("DROP FUNCTION fleet_audit_append_only()")
    op.drop_table("audit_events")
    op.drop_table("device_tags")
    op.drop_table("devices")
    op.drop_table("artifacts")
    op.drop_table("model_versions")
    op.drop_table("tags")
    op.drop_table("groups")
    op.drop_table("api_tokens")
