"""The chat API's refusals, through the real app and database, with vLLM unreachable."""

from __future__ import annotations

from litestar.testing import AsyncTestClient
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.db.models import Conversation, Message


async def count_rows(sessions: async_sessionmaker[AsyncSession]) -> tuple[int, int]:
    async with sessions() as session:
        messages = await session.scalar(select(func.count()).select_from(Message))
        conversations = await session.scalar(select(func.count()).select_from(Conversation))
    return messages or 0, conversations or 0


async def test_request_without_token_is_401(client: AsyncTestClient) -> None:
    response = await client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"


async def test_unknown_token_is_401(client: AsyncTestClient) -> None:
    response = await client.get("/v1/models", headers={"authorization": "Bearer rt_not-a-real-token"})
    assert response.status_code == 401


async def test_malformed_body_is_openai_shaped_400_and_stores_nothing(
    client: AsyncTestClient, user_token: str, sessions: async_sessionmaker[AsyncSession]
) -> None:
    headers = {"authorization": f"Bearer {user_token}"}
    bad_bodies = [
        {"messages": []},
        {"messages": [{"role": "user"}]},
        {"messages": [{"role": "wizard", "content": "hi"}]},
        {"messages": [{"role": "user", "content": "hi"}], "temperature": 7},
        {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0},
        {"messages": [{"role": "assistant", "content": "I spoke last"}]},
    ]
    for body in bad_bodies:
        response = await client.post("/v1/chat/completions", json=body, headers=headers)
        assert response.status_code == 400, (body, response.text)
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error" and error["message"]
    response = await client.post("/v1/chat/completions", content=b"{not json", headers=headers)
    assert response.status_code == 400
    assert await count_rows(sessions) == (0, 0)


async def test_unknown_model_is_404(client: AsyncTestClient, user_token: str) -> None:
    response = await client.post(
        "/v1/chat/completions",
        json={"model": "gpt-17", "messages": [{"role": "user", "content": "hi"}]},
        headers={"authorization": f"Bearer {user_token}"},
    )
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"


async def test_vllm_down_is_503_with_reason_and_readyz_says_so(
    client: AsyncTestClient, user_token: str, sessions: async_sessionmaker[AsyncSession]
) -> None:
    response = await client.post(
        "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "hi"}]},
        headers={"authorization": f"Bearer {user_token}"},
    )
    assert response.status_code == 503
    assert "unreachable" in response.json()["error"]["message"]
    async with sessions() as session:
        statuses = (await session.scalars(select(Message.status).where(Message.role == "assistant"))).all()
    assert statuses == ["failed"]

    ready = await client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["database"] == "ok"
    assert "unreachable" in ready.json()["checks"]["vllm"]


async def test_someone_elses_conversation_is_404(
    client: AsyncTestClient, user_token: str, sessions: async_sessionmaker[AsyncSession]
) -> None:
    from server.auth.services import UserService
    from server.db.models import Role

    other, _ = await UserService(sessions).create_user("someone-else", Role.USER)
    async with sessions.begin() as session:
        conversation = Conversation(user_id=other.user_id, channel="api", title="private")
        session.add(conversation)
    response = await client.post(
        "/v1/chat/completions",
        json={"conversation_id": str(conversation.id), "messages": [{"role": "user", "content": "hi"}]},
        headers={"authorization": f"Bearer {user_token}"},
    )
    assert response.status_code == 404
    assert await count_rows(sessions) == (0, 1)
