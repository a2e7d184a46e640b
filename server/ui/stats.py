"""Figures for the admin pages, counted by the database: per day and model version, the conversations, answers,
votes, up-rate, guardrail trips and errors; and per model version, its lineage and totals."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from server.db.models import (
    Message,
    MessageStatus,
    MessageVote,
    ModelAlias,
    ModelVersion,
    RailEvent,
    TuningRun,
    VoteValue,
)

TRIP_VERDICTS = ("block", "modify")
METRICS = ("conversations", "answers", "up", "down", "rail_trips", "errors")
NO_VERSION = "(none)"


def _day(value: Any) -> date:
    """`date()` gives a string on SQLite and a date on PostgreSQL."""
    return value if isinstance(value, date) else date.fromisoformat(str(value)[:10])


@dataclass(slots=True)
class DailyFigures:
    """`counts[metric][version][day]`; days run oldest to newest with no gaps, so charts share one x axis."""

    days: list[date]
    versions: list[str] = field(default_factory=list)
    counts: dict[str, dict[str, dict[date, int]]] = field(
        default_factory=lambda: {metric: defaultdict(lambda: defaultdict(int)) for metric in METRICS}
    )

    def series(self, metric: str, version: str) -> list[int]:
        return [self.counts[metric][version][day] for day in self.days]

    def up_rate(self, version: str) -> list[float | None]:
        """Share of thumbs-up among the day's votes; None on a day without votes (a gap, not a zero)."""
        rates: list[float | None] = []
        for up, down in zip(self.series("up", version), self.series("down", version), strict=True):
            rates.append(up / (up + down) if up + down else None)
        return rates

    def total(self, metric: str, version: str | None = None) -> int:
        versions = [version] if version else self.versions
        return sum(sum(self.counts[metric][name].values()) for name in versions)


@dataclass(slots=True)
class VersionOverview:
    version: ModelVersion
    aliases: list[str]
    canary_of: list[tuple[str, float]]
    trained_by: str | None
    answers: int
    up: int
    down: int

    @property
    def up_rate(self) -> float | None:
        return self.up / (self.up + self.down) if self.up + self.down else None


class UsageStats:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def daily(self, days: int, today: date | None = None) -> DailyFigures:
        today = today or datetime.now(UTC).date()
        first = today - timedelta(days=days - 1)
        since = datetime.combine(first, datetime.min.time(), tzinfo=UTC)
        figures = DailyFigures(days=[first + timedelta(days=offset) for offset in range(days)])
        version = func.coalesce(Message.model_version, NO_VERSION)
        answers = await self._session.execute(
            select(
                func.date(Message.created_at),
                version,
                func.count(),
                func.count(func.distinct(Message.conversation_id)),
                func.sum(case((Message.status == MessageStatus.FAILED, 1), else_=0)),
            )
            .where(Message.role == "assistant", Message.created_at >= since)
            .group_by(func.date(Message.created_at), version)
        )
        for day, name, count, conversations, errors in answers:
            self._add(figures, "answers", name, day, count)
            self._add(figures, "conversations", name, day, conversations)
            self._add(figures, "errors", name, day, errors or 0)
        votes = await self._session.execute(
            select(
                func.date(MessageVote.updated_at),
                version,
                func.sum(case((MessageVote.value == VoteValue.UP, 1), else_=0)),
                func.sum(case((MessageVote.value == VoteValue.DOWN, 1), else_=0)),
            )
            .join(Message, Message.id == MessageVote.message_id)
            .where(MessageVote.value.is_not(None), MessageVote.updated_at >= since)
            .group_by(func.date(MessageVote.updated_at), version)
        )
        for day, name, up, down in votes:
            self._add(figures, "up", name, day, up or 0)
            self._add(figures, "down", name, day, down or 0)
        # An input rail trips on the user's message, which has no version: it counts for its first answer's.
        first_answer = aliased(Message)
        tripped_version = func.coalesce(Message.model_version, first_answer.model_version, NO_VERSION)
        trips = await self._session.execute(
            select(func.date(RailEvent.created_at), tripped_version, func.count(func.distinct(RailEvent.id)))
            .join(Message, Message.id == RailEvent.message_id)
            .outerjoin(
                first_answer,
                (first_answer.reply_to_id == Message.id) & first_answer.regenerated_from_id.is_(None),
            )
            .where(RailEvent.verdict.in_(TRIP_VERDICTS), RailEvent.created_at >= since)
            .group_by(func.date(RailEvent.created_at), tripped_version)
        )
        for day, name, count in trips:
            self._add(figures, "rail_trips", name, day, count)
        return figures

    @staticmethod
    def _add(figures: DailyFigures, metric: str, version: str, day: Any, count: int) -> None:
        if version not in figures.versions:
            figures.versions.append(version)
            figures.versions.sort()
        figures.counts[metric][version][_day(day)] += int(count)

    async def versions(self, runs: list[TuningRun]) -> list[VersionOverview]:
        """Every model version, newest first, with the aliases that serve it and the run that trained it."""
        session = self._session
        versions = list(await session.scalars(select(ModelVersion).order_by(ModelVersion.created_at.desc())))
        aliases = list(await session.scalars(select(ModelAlias).order_by(ModelAlias.alias)))
        answers = dict(
            (
                await session.execute(
                    select(Message.model_version, func.count())
                    .where(Message.role == "assistant")
                    .group_by(Message.model_version)
                )
            ).all()
        )
        votes: dict[str, dict[str, int]] = defaultdict(dict)
        for name, value, count in await session.execute(
            select(Message.model_version, MessageVote.value, func.count())
            .join(Message, Message.id == MessageVote.message_id)
            .where(MessageVote.value.is_not(None))
            .group_by(Message.model_version, MessageVote.value)
        ):
            votes[name][value] = count
        trained_by = {path: run.run_id for run in runs for path in run.adapters.values()}
        return [
            VersionOverview(
                version=version,
                aliases=[alias.alias for alias in aliases if alias.version_name == version.name],
                canary_of=[
                    (alias.alias, alias.canary_fraction)
                    for alias in aliases
                    if alias.canary_version_name == version.name
                ],
                trained_by=trained_by.get(version.adapter_path or ""),
                answers=answers.get(version.name, 0),
                up=votes[version.name].get(VoteValue.UP, 0),
                down=votes[version.name].get(VoteValue.DOWN, 0),
            )
            for version in versions
        ]
