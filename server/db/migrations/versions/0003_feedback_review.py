"""feedback votes, review queue, regeneration links

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 04:34:25.068417
"""

from collections.abc import Sequence

import advanced_alchemy.types
import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "message_vote_history",
        sa.Column("id", advanced_alchemy.types.guid.GUID(length=16), nullable=False),
        sa.Column("message_id", advanced_alchemy.types.guid.GUID(length=16), nullable=False),
        sa.Column("user_id", advanced_alchemy.types.guid.GUID(length=16), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("value", sa.String(length=8), nullable=True),
        sa.Column(
            "reasons",
            advanced_alchemy.types.JsonB,
            nullable=False,
        ),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.Column("sa_orm_sentinel", sa.Integer(), nullable=True),
        sa.Column("created_at", advanced_alchemy.types.datetime.DateTimeUTC(timezone=True), nullable=False),
        sa.Column("updated_at", advanced_alchemy.types.datetime.DateTimeUTC(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.id"],
            name=op.f("fk_message_vote_history_message_id_messages"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_message_vote_history_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_message_vote_history")),
        sa.UniqueConstraint("message_id", "user_id", "revision", name=op.f("uq_message_vote_history_message_id")),
    )
    with op.batch_alter_table("message_vote_history", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_message_vote_history_user_id"), ["user_id"], unique=False)

    op.create_table(
        "message_votes",
        sa.Column("id", advanced_alchemy.types.guid.GUID(length=16), nullable=False),
        sa.Column("message_id", advanced_alchemy.types.guid.GUID(length=16), nullable=False),
        sa.Column("user_id", advanced_alchemy.types.guid.GUID(length=16), nullable=False),
        sa.Column("value", sa.String(length=8), nullable=True),
        sa.Column(
            "reasons",
            advanced_alchemy.types.JsonB,
            nullable=False,
        ),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("sa_orm_sentinel", sa.Integer(), nullable=True),
        sa.Column("created_at", advanced_alchemy.types.datetime.DateTimeUTC(timezone=True), nullable=False),
        sa.Column("updated_at", advanced_alchemy.types.datetime.DateTimeUTC(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["message_id"], ["messages.id"], name=op.f("fk_message_votes_message_id_messages"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_message_votes_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_message_votes")),
        sa.UniqueConstraint("message_id", "user_id", name=op.f("uq_message_votes_message_id")),
    )
    with op.batch_alter_table("message_votes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_message_votes_user_id"), ["user_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_message_votes_value"), ["value"], unique=False)

    op.create_table(
        "review_decisions",
        sa.Column("id", advanced_alchemy.types.guid.GUID(length=16), nullable=False),
        sa.Column("message_id", advanced_alchemy.types.guid.GUID(length=16), nullable=False),
        sa.Column("reviewer_id", advanced_alchemy.types.guid.GUID(length=16), nullable=False),
        sa.Column("decision", sa.String(length=16), nullable=False),
        sa.Column("correction", sa.Text(), nullable=True),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("sa_orm_sentinel", sa.Integer(), nullable=True),
        sa.Column("created_at", advanced_alchemy.types.datetime.DateTimeUTC(timezone=True), nullable=False),
        sa.Column("updated_at", advanced_alchemy.types.datetime.DateTimeUTC(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["message_id"], ["messages.id"], name=op.f("fk_review_decisions_message_id_messages"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["reviewer_id"], ["users.id"], name=op.f("fk_review_decisions_reviewer_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_review_decisions")),
    )
    with op.batch_alter_table("review_decisions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_review_decisions_message_id"), ["message_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_review_decisions_reviewer_id"), ["reviewer_id"], unique=False)

    op.create_table(
        "review_flags",
        sa.Column("id", advanced_alchemy.types.guid.GUID(length=16), nullable=False),
        sa.Column("message_id", advanced_alchemy.types.guid.GUID(length=16), nullable=False),
        sa.Column("flagged_by_id", advanced_alchemy.types.guid.GUID(length=16), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("sa_orm_sentinel", sa.Integer(), nullable=True),
        sa.Column("created_at", advanced_alchemy.types.datetime.DateTimeUTC(timezone=True), nullable=False),
        sa.Column("updated_at", advanced_alchemy.types.datetime.DateTimeUTC(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["flagged_by_id"], ["users.id"], name=op.f("fk_review_flags_flagged_by_id_users"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["message_id"], ["messages.id"], name=op.f("fk_review_flags_message_id_messages"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_review_flags")),
    )
    with op.batch_alter_table("review_flags", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_review_flags_message_id"), ["message_id"], unique=False)

    op.create_table(
        "review_states",
        sa.Column("id", advanced_alchemy.types.guid.GUID(length=16), nullable=False),
        sa.Column("message_id", advanced_alchemy.types.guid.GUID(length=16), nullable=False),
        sa.Column("decision_id", advanced_alchemy.types.guid.GUID(length=16), nullable=False),
        sa.Column("decision", sa.String(length=16), nullable=False),
        sa.Column("trainable", sa.Boolean(), nullable=False),
        sa.Column("correction", sa.Text(), nullable=True),
        sa.Column("sa_orm_sentinel", sa.Integer(), nullable=True),
        sa.Column("created_at", advanced_alchemy.types.datetime.DateTimeUTC(timezone=True), nullable=False),
        sa.Column("updated_at", advanced_alchemy.types.datetime.DateTimeUTC(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["decision_id"],
            ["review_decisions.id"],
            name=op.f("fk_review_states_decision_id_review_decisions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["message_id"], ["messages.id"], name=op.f("fk_review_states_message_id_messages"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_review_states")),
        sa.UniqueConstraint("message_id", name=op.f("uq_review_states_message_id")),
    )
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("regenerated_from_id", advanced_alchemy.types.guid.GUID(length=16), nullable=True)
        )
        batch_op.create_foreign_key(
            batch_op.f("fk_messages_regenerated_from_id_messages"),
            "messages",
            ["regenerated_from_id"],
            ["id"],
            ondelete="CASCADE",
        )


def downgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_messages_regenerated_from_id_messages"), type_="foreignkey")
        batch_op.drop_column("regenerated_from_id")

    op.drop_table("review_states")
    with op.batch_alter_table("review_flags", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_review_flags_message_id"))

    op.drop_table("review_flags")
    with op.batch_alter_table("review_decisions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_review_decisions_reviewer_id"))
        batch_op.drop_index(batch_op.f("ix_review_decisions_message_id"))

    op.drop_table("review_decisions")
    with op.batch_alter_table("message_votes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_message_votes_value"))
        batch_op.drop_index(batch_op.f("ix_message_votes_user_id"))

    op.drop_table("message_votes")
    with op.batch_alter_table("message_vote_history", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_message_vote_history_user_id"))

    op.drop_table("message_vote_history")
