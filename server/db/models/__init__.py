"""All tables. Import models from here so Alembic and the mappers see every table."""

from advanced_alchemy.base import UUIDv7AuditBase

from server.db.models.auth import ApiToken, User
from server.db.models.chat import Conversation, Message
from server.db.models.enums import Channel, MessageStatus, Role
from server.db.models.feedback import MessageVote, VoteAction, VoteHistory, VoteReason, VoteValue
from server.db.models.rails import RailEvent
from server.db.models.review import ReviewDecision, ReviewDecisionKind, ReviewFlag, ReviewState
from server.db.models.serving import ModelAlias, ModelKind, ModelPin, ModelStatus, ModelTransition, ModelVersion
from server.db.models.slack import SlackAnswer, SlackIdentity, SlackInbox, SlackThread
from server.db.models.tuning import TuningRun

metadata = UUIDv7AuditBase.metadata

__all__ = [
    "ApiToken",
    "Channel",
    "Conversation",
    "Message",
    "MessageStatus",
    "MessageVote",
    "ModelAlias",
    "ModelKind",
    "ModelPin",
    "ModelStatus",
    "ModelTransition",
    "ModelVersion",
    "RailEvent",
    "ReviewDecision",
    "ReviewDecisionKind",
    "ReviewFlag",
    "ReviewState",
    "Role",
    "SlackAnswer",
    "SlackIdentity",
    "SlackInbox",
    "SlackThread",
    "TuningRun",
    "User",
    "VoteAction",
    "VoteHistory",
    "VoteReason",
    "VoteValue",
    "metadata",
]
