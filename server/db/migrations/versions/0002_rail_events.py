"""rail events

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 04:30:05.401250
"""

from collections.abc import Sequence

import advanced_alchemy.types
import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "rail_events",
        sa.Column("id", advanced_alchemy.types.guid.GUID(length=16), nullable=False),
        sa.Column("message_id", advanced_alchemy.types.guid.GUID(length=16), nullable=False),
        sa.Column("direction", sa.String(length=8), nullable=False),
        sa.Column("rail", sa.String(length=100), nullable=False),
        sa.Column("verdict", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("duration_ms", sa.Float(), nullable=False),
        sa.Column("sa_orm_sentinel", sa.Integer(), nullable=True),
        sa.Column("created_at", advanced_alchemy.types.datetime.DateTimeUTC(timezone=True), nullable=False),
        sa.Column("updated_at", advanced_alchemy.types.datetime.DateTimeUTC(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["message_id"], ["messages.id"], name=op.f("fk_rail_events_message_id_messages"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rail_events")),
    )
    with op.batch_alter_table("rail_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_rail_events_message_id"), ["message_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_rail_events_verdict"), ["verdict"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("rail_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_rail_events_verdict"))
        batch_op.drop_index(batch_op.f("ix_rail_events_message_id"))

    op.drop_table("rail_events")
