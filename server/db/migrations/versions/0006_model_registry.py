"""model registry: version lineage, hashes, metrics, gates; transitions; pins; alias canary start

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 04:36:19.965956
"""

from collections.abc import Sequence

import advanced_alchemy.types
import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

AUDIT_COLUMNS = (
    ("sa_orm_sentinel", sa.Integer(), True),
    ("created_at", advanced_alchemy.types.datetime.DateTimeUTC(timezone=True), False),
    ("updated_at", advanced_alchemy.types.datetime.DateTimeUTC(timezone=True), False),
)


def _audit_columns() -> list[sa.Column]:
    return [sa.Column(name, kind, nullable=nullable) for name, kind, nullable in AUDIT_COLUMNS]


def _json(name: str, default: str | None) -> sa.Column:
    # Existing rows get the empty value; new rows always get theirs from the model.
    server_default = sa.text(f"'{default}'") if default is not None else None
    return sa.Column(name, advanced_alchemy.types.JsonB, nullable=default is None, server_default=server_default)


def upgrade() -> None:
    op.create_table(
        "model_transitions",
        sa.Column("id", advanced_alchemy.types.guid.GUID(length=16), nullable=False),
        sa.Column("version_name", sa.String(length=200), nullable=False),
        sa.Column("from_status", sa.String(length=32), nullable=True),
        sa.Column("to_status", sa.String(length=32), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        *_audit_columns(),
        sa.ForeignKeyConstraint(
            ["version_name"], ["model_versions.name"], name=op.f("fk_model_transitions_version_name_model_versions")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_transitions")),
    )
    with op.batch_alter_table("model_transitions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_model_transitions_version_name"), ["version_name"], unique=False)

    op.create_table(
        "model_pins",
        sa.Column("id", advanced_alchemy.types.guid.GUID(length=16), nullable=False),
        sa.Column("alias", sa.String(length=200), nullable=False),
        sa.Column("user_id", advanced_alchemy.types.guid.GUID(length=16), nullable=False),
        sa.Column("version_name", sa.String(length=200), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        *_audit_columns(),
        sa.ForeignKeyConstraint(
            ["alias"], ["model_aliases.alias"], name=op.f("fk_model_pins_alias_model_aliases"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_model_pins_user_id_users"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["version_name"], ["model_versions.name"], name=op.f("fk_model_pins_version_name_model_versions")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_pins")),
        sa.UniqueConstraint("alias", "user_id", name=op.f("uq_model_pins_alias")),
    )
    with op.batch_alter_table("model_pins", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_model_pins_user_id"), ["user_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_model_pins_version_name"), ["version_name"], unique=False)

    with op.batch_alter_table("model_aliases", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("canary_started_at", advanced_alchemy.types.datetime.DateTimeUTC(timezone=True), nullable=True)
        )
        batch_op.add_column(sa.Column("previous_version_name", sa.String(length=200), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_model_aliases_previous_version_name_model_versions"),
            "model_versions",
            ["previous_version_name"],
            ["name"],
        )

    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("parent_name", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("run_id", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("data_hash", sa.String(length=64), nullable=False, server_default=""))
        batch_op.add_column(sa.Column("method", sa.String(length=32), nullable=False, server_default=""))
        batch_op.add_column(_json("method_settings", "{}"))
        batch_op.add_column(_json("artefact_hashes", "{}"))
        batch_op.add_column(_json("metrics", "{}"))
        batch_op.add_column(_json("gate_results", "[]"))
        batch_op.add_column(sa.Column("gates_passed", sa.Boolean(), nullable=True))
        batch_op.add_column(_json("canary_summary", None))
        batch_op.create_index(batch_op.f("ix_model_versions_status"), ["status"], unique=False)
        batch_op.create_foreign_key(
            batch_op.f("fk_model_versions_parent_name_model_versions"), "model_versions", ["parent_name"], ["name"]
        )
    # The base checkpoint a 0004 app registered as "serving" is what the registry calls active.
    op.execute("UPDATE model_versions SET status = 'active' WHERE status = 'serving'")


def downgrade() -> None:
    op.execute("UPDATE model_versions SET status = 'serving' WHERE status = 'active'")
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_model_versions_parent_name_model_versions"), type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_model_versions_status"))
        for column in (
            "canary_summary",
            "gates_passed",
            "gate_results",
            "metrics",
            "artefact_hashes",
            "method_settings",
            "method",
            "data_hash",
            "run_id",
            "parent_name",
        ):
            batch_op.drop_column(column)

    with op.batch_alter_table("model_aliases", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("fk_model_aliases_previous_version_name_model_versions"), type_="foreignkey"
        )
        batch_op.drop_column("previous_version_name")
        batch_op.drop_column("canary_started_at")

    with op.batch_alter_table("model_pins", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_model_pins_version_name"))
        batch_op.drop_index(batch_op.f("ix_model_pins_user_id"))
    op.drop_table("model_pins")
    with op.batch_alter_table("model_transitions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_model_transitions_version_name"))
    op.drop_table("model_transitions")
