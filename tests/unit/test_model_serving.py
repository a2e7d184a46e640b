"""Serving what the registry says: the sticky canary split, routing only to loaded versions, the reconciler that
re-loads live versions after a vLLM restart and unloads drained ones, and the live canary acting on seeded votes,
on the real database with vLLM's adapter routes played by a FakeEngine."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from uuid import uuid4

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from uuid_utils.compat import uuid7

from server.db.models import Conversation, Message, ModelAlias
from server.models.canary import CanaryAction
from server.models.services import ModelLoadingError, UnknownModelError, canary_bucket
from server.settings import Settings
from tests.unit.model_fixtures import BASE_NAME, Serving, add_users, answers_with_votes, serving


@pytest.fixture
async def models(settings: Settings, sessions: async_sessionmaker[AsyncSession]) -> Serving:
    return await serving(settings, sessions)


async def canary_of(models: Serving, adapter: str, name: str) -> str:
    await models.gated(adapter, name)
    await models.lifecycle.promote(name, "admin:root", "canary")
    await models.sync()
    return name


async def test_the_canary_share_is_sticky_per_user_and_near_the_configured_fraction(models: Serving) -> None:
    canary = await canary_of(models, "good", "ratchet-kto-1")
    users = [uuid4() for _ in range(4000)]
    routed = {user: models.router.resolve("ratchet", user).version for user in users}
    share = Counter(routed.values())[canary] / len(users)
    assert 0.175 < share < 0.225  # 0.2 ± 3 standard deviations of 4000 draws
    assert all(models.router.resolve("ratchet", user).version == routed[user] for user in users[:200])
    # A user without an identity (nothing to stick to) is never in a canary.
    assert models.router.resolve("ratchet").version == BASE_NAME
    # The next canary draws its own share: not the same users again.
    in_first = {user for user, version in routed.items() if version == canary}
    in_next = {user for user in users if canary_bucket(user, "ratchet-kto-2") < 0.2}
    assert len(in_first & in_next) / len(users) < 0.06


async def test_nobody_is_routed_to_a_version_vllm_does_not_have(models: Serving) -> None:
    canary = await canary_of(models, "good", "ratchet-kto-1")
    users = [uuid4() for _ in range(200)]
    models.engine.restart()
    models.engine.down = True  # still starting: the reconciler cannot load anything yet
    await models.sync()
    # The canary's users fall back to the active version meanwhile.
    assert {models.router.resolve("ratchet", user).version for user in users} == {BASE_NAME}
    await models.lifecycle.promote(canary, "admin:root", "active now")
    await models.router.refresh()
    with pytest.raises(ModelLoadingError) as loading:
        models.router.resolve("ratchet", users[0])
    assert loading.value.status_code == 503
    assert canary in models.reconciler.missing  # readiness says so
    models.engine.down = False
    await models.sync()
    assert models.router.resolve("ratchet", users[0]).version == canary
    assert models.reconciler.missing == {}


async def test_a_restarted_vllm_gets_every_live_version_back_before_routing(models: Serving) -> None:
    active = await canary_of(models, "good", "ratchet-kto-1")
    await models.lifecycle.promote(active, "admin:root", "active")
    canary = await canary_of(models, "good-2", "ratchet-kto-2")
    [pinned_user] = await add_users(models.sessions, "pinned", 1)
    pinned = await models.gated("good-3", "ratchet-kto-3")
    await models.lifecycle.pin(pinned, ["pinned-0"], "admin:root", "testers")
    models.engine.restart()
    models.engine.loads.clear()
    await models.sync()
    assert sorted(models.engine.loads) == [active, canary, pinned]
    users = [uuid4() for _ in range(500)]
    assert {models.router.resolve("ratchet", user).version for user in users} == {active, canary}
    assert models.router.resolve("ratchet", pinned_user).version == pinned


async def test_a_version_leaves_vllm_only_after_the_grace_and_once_nothing_is_in_flight(models: Serving) -> None:
    [user] = await add_users(models.sessions, "drain", 1)
    first = await canary_of(models, "good", "ratchet-kto-1")
    await models.lifecycle.promote(first, "admin:root", "active")
    second = await canary_of(models, "good-2", "ratchet-kto-2")
    answer = uuid7()
    async with models.sessions.begin() as session:
        conversation = Conversation(id=uuid7(), user_id=user, channel="api", title="long answer")
        session.add(conversation)
        await session.flush()
        session.add(
            Message(
                id=answer,
                conversation_id=conversation.id,
                user_id=user,
                role="assistant",
                channel="api",
                status="pending",
                model_alias="ratchet",
                model_version=first,
            )
        )
    await models.lifecycle.promote(second, "admin:root", "active")
    await models.sync()
    assert models.engine.unloads == []
    with pytest.raises(UnknownModelError, match="retired"):
        models.router.resolve(first, user)
    models.now[0] += models.settings.model_drain_grace_s + 1
    await models.sync()
    assert models.engine.unloads == []  # its last answer is still being written
    async with models.sessions.begin() as session:
        await session.execute(update(Message).where(Message.id == answer).values(status="complete"))
    await models.sync()
    assert models.engine.unloads == [first]
    assert second in models.engine.served and first not in models.engine.served


def transitions_counted(to_status: str, actor: str) -> float:
    value = REGISTRY.get_sample_value("ratchet_model_transitions_total", {"to_status": to_status, "actor": actor})
    return value or 0.0


async def test_the_live_canary_promotes_a_better_candidate_and_rolls_back_a_worse_one(models: Serving) -> None:
    first = await canary_of(models, "good", "ratchet-kto-1")
    active_users = await add_users(models.sessions, "a", 12)
    canary_users = await add_users(models.sessions, "c", 12)
    await answers_with_votes(models.sessions, BASE_NAME, active_users, ups_per_user=3, downs_per_user=3)
    await answers_with_votes(models.sessions, first, canary_users, ups_per_user=3, downs_per_user=3)
    (reading,) = await models.canary.check()
    assert reading.decision.action == CanaryAction.CONTINUE  # 50% vs 50%: not enough to decide either way
    await answers_with_votes(models.sessions, first, canary_users, ups_per_user=6, downs_per_user=0)
    await answers_with_votes(models.sessions, BASE_NAME, active_users, ups_per_user=2, downs_per_user=4)
    (reading,) = await models.canary.check()
    assert reading.decision.action == CanaryAction.PROMOTE
    promoted = await models.registry.describe(first)
    assert promoted.status == "active" and promoted.transitions[-1].actor == "canary"
    assert promoted.canary is not None and promoted.canary["decision"] == "promote"
    assert (promoted.canary["arms"]["candidate"]["votes"], promoted.canary["arms"]["candidate"]["ups"]) == (144, 108)
    assert (await models.registry.get(BASE_NAME)).status == "retired"

    rolled_back_before = transitions_counted("rolled_back", "canary")
    second = await canary_of(models, "good-2", "ratchet-kto-2")
    await answers_with_votes(models.sessions, first, active_users, ups_per_user=7, downs_per_user=1)
    await answers_with_votes(models.sessions, second, canary_users, ups_per_user=2, downs_per_user=6)
    (reading,) = await models.canary.check()
    assert reading.decision.action == CanaryAction.ROLLBACK
    assert (await models.registry.get(second)).status == "rolled_back"
    assert transitions_counted("rolled_back", "canary") == rolled_back_before + 1
    async with models.sessions() as session:
        target = await session.scalar(select(ModelAlias).where(ModelAlias.alias == "ratchet"))
        assert target is not None and (target.version_name, target.canary_version_name) == (first, None)
    assert await models.canary.check() == []
    await models.sync()
    models.now[0] += models.settings.model_drain_grace_s + 1
    await models.sync()
    assert models.engine.unloads == [second]


async def test_a_candidate_that_trips_the_rails_more_is_rolled_back(models: Serving) -> None:
    candidate = await canary_of(models, "good", "ratchet-kto-1")
    active_users = await add_users(models.sessions, "a", 12)
    canary_users = await add_users(models.sessions, "c", 12)
    await answers_with_votes(models.sessions, BASE_NAME, active_users, ups_per_user=4, downs_per_user=4)
    await answers_with_votes(
        models.sessions, candidate, canary_users, ups_per_user=4, downs_per_user=4, trips_per_user=4
    )
    (reading,) = await models.canary.check()
    assert reading.decision.action == CanaryAction.ROLLBACK
    assert "guardrail-trip rate is higher" in reading.decision.reason
    assert reading.summary()["arms"]["candidate"]["trips"] == 48


async def test_pinned_users_and_answers_before_the_canary_count_for_neither_arm(models: Serving) -> None:
    early = await add_users(models.sessions, "early", 3)
    await answers_with_votes(
        models.sessions, BASE_NAME, early, ups_per_user=5, downs_per_user=0, at=datetime(2020, 1, 1, tzinfo=UTC)
    )
    candidate = await canary_of(models, "good", "ratchet-kto-1")
    pinned = await add_users(models.sessions, "pinned", 2)
    await models.lifecycle.pin(candidate, ["pinned-0", "pinned-1"], "admin:root", "testers")
    await answers_with_votes(models.sessions, candidate, pinned, ups_per_user=5, downs_per_user=0)
    counted = await add_users(models.sessions, "counted", 1)
    await answers_with_votes(models.sessions, candidate, counted, ups_per_user=1, downs_per_user=1)
    reading = await models.registry.canary_reading(candidate)
    assert reading is not None
    arms = reading.summary()["arms"]
    assert (arms["candidate"]["votes"], arms["candidate"]["voters"]) == (2, 1)
    assert arms["active"]["votes"] == 0
