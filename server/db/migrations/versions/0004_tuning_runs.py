"""tuning runs

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 04:41:31.485489
"""

from collections.abc import Sequence

import advanced_alchemy.types
import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "tuning_runs",
        sa.Column("id", advanced_alchemy.types.guid.GUID(length=16), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("stage", sa.String(length=32), nullable=False),
        sa.Column("methods", advanced_alchemy.types.JsonB, nullable=False),
        sa.Column("data_since", advanced_alchemy.types.datetime.DateTimeUTC(timezone=True), nullable=True),
        sa.Column("data_until", advanced_alchemy.types.datetime.DateTimeUTC(timezone=True), nullable=False),
        sa.Column("dataset_hash", sa.String(length=64), nullable=False),
        sa.Column("run_dir", sa.String(length=500), nullable=False),
        sa.Column("reward_model_path", sa.String(length=500), nullable=True),
        sa.Column("adapters", advanced_alchemy.types.JsonB, nullable=False),
        sa.Column("counts", advanced_alchemy.types.JsonB, nullable=False),
        sa.Column("held_out", advanced_alchemy.types.JsonB, nullable=False),
        sa.Column("durations_s", advanced_alchemy.types.JsonB, nullable=False),
        sa.Column("versions", advanced_alchemy.types.JsonB, nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("finished_at", advanced_alchemy.types.datetime.DateTimeUTC(timezone=True), nullable=True),
        sa.Column("sa_orm_sentinel", sa.Integer(), nullable=True),
        sa.Column("created_at", advanced_alchemy.types.datetime.DateTimeUTC(timezone=True), nullable=False),
        sa.Column("updated_at", advanced_alchemy.types.datetime.DateTimeUTC(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tuning_runs")),
        sa.UniqueConstraint("run_id", name=op.f("uq_tuning_runs_run_id")),
    )
    with op.batch_alter_table("tuning_runs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_tuning_runs_status"), ["status"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("tuning_runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_tuning_runs_status"))

    op.drop_table("tuning_runs")
