"""Rail verdicts as stored rows (what the ops review queue picks up) and Prometheus counts."""

from __future__ import annotations

from collections.abc import Iterable
from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncSession

from server.db.models import RailEvent
from server.rails.base import RailVerdict
from server.system import metrics


def store_verdicts(session: AsyncSession, message_id: UUID, verdicts: Iterable[RailVerdict]) -> None:
    """Adds one `rail_events` row per verdict to the caller's transaction (stored with the message or not at all)."""
    for verdict in verdicts:
        session.add(
            RailEvent(
                message_id=message_id,
                direction=str(verdict.direction),
                rail=verdict.rail[:100],
                verdict=str(verdict.verdict),
                reason=verdict.reason,
                duration_ms=round(verdict.duration_ms, 3),
            )
        )


def count_verdicts(verdicts: Iterable[RailVerdict]) -> None:
    for verdict in verdicts:
        metrics.RAIL_DECISIONS.labels(str(verdict.direction), verdict.rail, str(verdict.verdict)).inc()
        metrics.RAIL_SECONDS.labels(str(verdict.direction), verdict.rail).observe(verdict.duration_ms / 1000)
