"""Who may see what: bearer tokens, the trusted-header mode, and each user's own conversations."""

from __future__ import annotations

from litestar.testing import AsyncTestClient
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.app import create_app
from server.auth.services import UserService, hash_token
from server.db.models import ApiToken, Conversation, Message, Role, User
from server.settings import Settings


async def test_tokens_are_stored_only_as_hashes(sessions: async_sessionmaker[AsyncSession]) -> None:
    _, token = await UserService(sessions).create_user("hash-check", Role.OPS)
    async with sessions() as session:
        stored = (await session.scalars(select(ApiToken.token_hash))).all()
    assert token not in stored
    assert hash_token(token) in stored


async def test_trusted_header_is_ignored_unless_the_mode_is_on(client: AsyncTestClient) -> None:
    response = await client.get("/api/conversations", headers={"X-Forwarded-User": "eve"})
    assert response.status_code == 401


async def test_trusted_header_mode_makes_the_named_user(
    settings: Settings, sessions: async_sessionmaker[AsyncSession]
) -> None:
    sso = settings.model_copy(update={"trusted_user_header": "X-Forwarded-User"})
    async with AsyncTestClient(app=create_app(sso)) as sso_client:
        response = await sso_client.get("/api/conversations", headers={"X-Forwarded-User": "dana"})
        assert response.status_code == 200 and response.json() == []
        assert (await sso_client.get("/api/conversations")).status_code == 401
    async with sessions() as session:
        user = await session.scalar(select(User).where(User.name == "dana"))
    assert user is not None and user.role == Role.USER


async def test_users_see_only_their_own_conversations(
    client: AsyncTestClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    users = UserService(sessions)
    alice, alice_token = await users.create_user("alice", Role.USER)
    bob, bob_token = await users.create_user("bob", Role.USER)
    async with sessions.begin() as session:
        mine = Conversation(user_id=alice.user_id, channel="api", title="alice's question")
        session.add(mine)
        await session.flush()
        session.add(Message(conversation_id=mine.id, user_id=alice.user_id, role="user", content="hi", channel="api"))
    alice_headers = {"authorization": f"Bearer {alice_token}"}
    bob_headers = {"authorization": f"Bearer {bob_token}"}

    listed = (await client.get("/api/conversations", headers=alice_headers)).json()
    assert [item["title"] for item in listed] == ["alice's question"]
    detail = await client.get(f"/api/conversations/{mine.id}", headers=alice_headers)
    assert detail.status_code == 200
    assert [message["content"] for message in detail.json()["messages"]] == ["hi"]

    assert (await client.get("/api/conversations", headers=bob_headers)).json() == []
    assert (await client.get(f"/api/conversations/{mine.id}", headers=bob_headers)).status_code == 404
    assert bob.user_id != alice.user_id
