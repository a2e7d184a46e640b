"""The live canary: reads each running canary's arms from the store, asks the sequential verdict
(server/models/canary.py) and acts on it as the actor `canary`: promote (the candidate becomes active, the version
it replaces is retired and unloaded once drained) or roll back (the candidate is rolled back and unloaded once
drained; the transition, a warning in the log and `ratchet_model_transitions_total{to_status="rolled_back",
actor="canary"}` are what ops see).

It runs every `canary_check_interval_s` rather than inside the vote path: a vote stays one database statement, and
the verdict's error rates hold however often it is asked (checking every few seconds asks it at most once per vote
and usually less). Several app replicas may run it at once: each action is a compare-and-set on the version's
status, so only one of them acts."""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.db.models import ModelAlias
from server.models.arms import CanaryReading, read_canary
from server.models.canary import CanaryAction
from server.models.lifecycle import ModelLifecycle
from server.models.transitions import TransitionRefusedError

log = logging.getLogger("ratchet.models")


class LiveCanary:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], lifecycle: ModelLifecycle) -> None:
        self._sessions = sessions
        self._lifecycle = lifecycle

    async def check(self) -> list[CanaryReading]:
        """Judge every running canary once and act on the verdicts; returns what was read."""
        async with self._sessions() as session:
            aliases = (
                await session.scalars(select(ModelAlias).where(ModelAlias.canary_version_name.is_not(None)))
            ).all()
            readings = [await read_canary(session, alias, self._lifecycle.policy) for alias in aliases]
        for reading in readings:
            if reading is not None:
                await self._act(reading)
        return [reading for reading in readings if reading is not None]

    async def _act(self, reading: CanaryReading) -> None:
        decision = reading.decision
        candidate = reading.alias.canary_version_name
        assert candidate is not None
        try:
            if decision.action == CanaryAction.PROMOTE:
                await self._lifecycle.promote(candidate, "canary", decision.reason, canary_summary=reading.summary())
            elif decision.action == CanaryAction.ROLLBACK:
                await self._lifecycle.rollback(candidate, "canary", decision.reason, canary_summary=reading.summary())
        except TransitionRefusedError as error:
            # Another replica or an admin acted on this canary first.
            log.info("canary verdict on %s not applied: %s", candidate, error)
