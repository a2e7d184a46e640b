"""What each arm of a live canary got, read from the store, and the canary's verdict on it
(server/models/canary.py).

An arm is the answers one version gave through the alias since the canary began. Users pinned on the alias are
left out of both arms: they did not get their version by the sticky split, so they are not a fair sample. Per user,
each arm counts current votes on its answers (a changed vote once, a withdrawn one not at all), finished requests,
answers the output rails stopped (trips) and answers that failed. Questions the input rails refused never reached a
model and count for neither arm."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import and_, case, exists, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from server.db.models import Message, MessageStatus, MessageVote, ModelAlias, ModelPin, RailEvent, VoteValue
from server.models.canary import ArmStats, CanaryDecision, CanaryPolicy, UserRequests, UserVotes, decide
from server.rails.base import Direction, Verdict


async def arm_stats(
    session: AsyncSession, alias: str, version: str, since: datetime, excluded_users: set[UUID]
) -> ArmStats:
    answers = [
        Message.role == "assistant",
        Message.model_alias == alias,
        Message.model_version == version,
        Message.created_at >= since,
    ]
    if excluded_users:
        answers.append(Message.user_id.not_in(excluded_users))
    votes = await session.execute(
        select(Message.user_id, func.count(), func.sum(case((MessageVote.value == VoteValue.UP, 1), else_=0)))
        .join(MessageVote, and_(MessageVote.message_id == Message.id, MessageVote.user_id == Message.user_id))
        .where(*answers, MessageVote.value.is_not(None))
        .group_by(Message.user_id)
    )
    tripped = exists().where(
        RailEvent.message_id == Message.id,
        RailEvent.direction == Direction.OUTPUT,
        RailEvent.verdict == Verdict.BLOCK,
    )
    refused_question = exists().where(
        RailEvent.message_id == Message.reply_to_id,
        RailEvent.direction == Direction.INPUT,
        RailEvent.verdict == Verdict.BLOCK,
    )
    requests = await session.execute(
        select(
            Message.user_id,
            func.count(),
            func.sum(case((tripped, 1), else_=0)),
            func.sum(case((Message.status == MessageStatus.FAILED, 1), else_=0)),
        )
        .where(*answers, Message.status != MessageStatus.PENDING, ~refused_question)
        .group_by(Message.user_id)
    )
    return ArmStats(
        votes={user: UserVotes(int(count), int(ups)) for user, count, ups in votes.all()},
        requests={
            user: UserRequests(int(count), int(trips), int(errors)) for user, count, trips, errors in requests.all()
        },
    )


@dataclass(frozen=True)
class CanaryReading:
    """A running canary's arms so far and the verdict on them."""

    alias: ModelAlias
    active: ArmStats
    candidate: ArmStats
    decision: CanaryDecision

    def summary(self) -> dict[str, Any]:
        """As JSON: what the API shows and what a version keeps when its canary ends."""
        alias, decision = self.alias, self.decision
        return {
            "alias": alias.alias,
            "active_version": alias.version_name,
            "candidate_version": alias.canary_version_name,
            "fraction": alias.canary_fraction,
            "started_at": alias.canary_started_at.isoformat() if alias.canary_started_at else None,
            "arms": {"active": _counts(self.active), "candidate": _counts(self.candidate)},
            "decision": str(decision.action),
            "reason": decision.reason,
            "votes": asdict(decision.votes),
            "trips": asdict(decision.trips),
            "errors": asdict(decision.errors),
        }


def _counts(arm: ArmStats) -> dict[str, Any]:
    """Raw counts, before the per-user cap the verdict applies."""
    votes = sum(tally.votes for tally in arm.votes.values())
    ups = sum(tally.ups for tally in arm.votes.values())
    requests = sum(tally.requests for tally in arm.requests.values())
    return {
        "voters": len(arm.votes),
        "votes": votes,
        "ups": ups,
        "up_rate": ups / votes if votes else None,
        "requests": requests,
        "trips": sum(tally.trips for tally in arm.requests.values()),
        "errors": sum(tally.errors for tally in arm.requests.values()),
    }


async def read_canary(session: AsyncSession, alias: ModelAlias, policy: CanaryPolicy) -> CanaryReading | None:
    """The alias's running canary so far; None when it has none."""
    if not alias.canary_version_name or alias.canary_started_at is None:
        return None
    pinned = set((await session.scalars(select(ModelPin.user_id).where(ModelPin.alias == alias.alias))).all())
    active = await arm_stats(session, alias.alias, alias.version_name, alias.canary_started_at, pinned)
    candidate = await arm_stats(session, alias.alias, alias.canary_version_name, alias.canary_started_at, pinned)
    return CanaryReading(alias, active, candidate, decide(active, candidate, policy))
