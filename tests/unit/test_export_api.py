"""Training-data exports and data deletion, through the real app, CLI and database (SQLite and PostgreSQL)."""

from __future__ import annotations

import io
import json
import os
import sys
import uuid
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.db.models import Conversation, Message, MessageVote, ReviewDecision, Role, VoteHistory
from server.settings import Settings
from tests.unit.feedback_store import SYSTEM, SeededStore, count, person, seed_realistic_store

EXPORT = "/api/exports/training-data"
RAW_PERSONAL_DATA = ["carol.smith@example.com", "hr@example.com", "it-help@example.com", "415 555 0100"]


def unzip(content: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def rows(files: dict[str, bytes], name: str) -> list[dict]:
    return [json.loads(line) for line in files[name].decode().splitlines()]


async def export(client: AsyncTestClient, seeded: SeededStore, **params: str) -> dict[str, bytes]:
    response = await client.get(EXPORT, params=params, headers=seeded.people["root"].headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    files = unzip(response.content)
    assert json.loads(files["manifest.json"])["content_hash"] == response.headers["x-ratchet-export-hash"]
    return files


async def seeded_with_admin(sessions: async_sessionmaker[AsyncSession]) -> SeededStore:
    seeded = await seed_realistic_store(sessions)
    seeded.people["root"] = await person(sessions, "root", Role.ADMIN)
    return seeded


async def test_export_builds_each_trl_file_from_votes_corrections_regenerations_and_repeated_prompts(
    client: AsyncTestClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    seeded = await seeded_with_admin(sessions)
    turns = seeded.turns
    files = await export(
        client,
        seeded,
        since=seeded.since.isoformat(),
        until=seeded.until.isoformat(),
        model_version="smollm2-135m-instruct",
    )
    assert sorted(files) == ["kto.jsonl", "manifest.json", "preference.jsonl", "reward.jsonl", "sft.jsonl"]
    kto, reward, pairs, sft = (
        rows(files, name) for name in ("kto.jsonl", "reward.jsonl", "preference.jsonl", "sft.jsonl")
    )

    # The prompt is the whole context in chat format: system prompt, earlier turns, the question.
    vpn_answer = "Open the Company VPN client, choose the 'Office' profile and sign in with your usual account."
    phone_context = [
        SYSTEM,
        {"role": "user", "content": "How do I connect to the VPN from home?"},
        {"role": "assistant", "content": vpn_answer},
        {"role": "user", "content": "And on my phone?"},
    ]
    assert {
        "prompt": phone_context,
        "completion": [{"role": "assistant", "content": "Phones cannot use the VPN."}],
        "label": False,
    } in kto
    assert all(set(row) == {"prompt", "completion", "label"} and isinstance(row["label"], bool) for row in kto)
    assert sorted(row["label"] for row in kto) == [False, False, False, True, True, True, True]
    assert all(set(row) == {"prompt", "completion", "reward"} for row in reward)
    assert sorted(row["reward"] for row in reward) == [-1.0, -1.0, -1.0, 1.0, 1.0, 1.0, 1.0]

    correction = "Yes: install the Company VPN app from the Intune portal and sign in; mail [EMAIL] if stuck."
    wifi_prompt = [SYSTEM, {"role": "user", "content": "What is the guest Wi-Fi password?"}]
    regenerated = "Guests get a daily Wi-Fi code from reception; ask there when you arrive."
    assert pairs == [
        {
            "prompt": phone_context,
            "chosen": [{"role": "assistant", "content": correction}],
            "rejected": [{"role": "assistant", "content": "Phones cannot use the VPN."}],
        },
        {
            "prompt": wifi_prompt,
            "chosen": [{"role": "assistant", "content": regenerated}],
            "rejected": [{"role": "assistant", "content": "It is printed on a sticker under the router."}],
        },
        {
            "prompt": wifi_prompt,
            "chosen": [{"role": "assistant", "content": regenerated}],
            "rejected": [{"role": "assistant", "content": "I cannot share passwords."}],
        },
    ]
    assert sft == [
        {"prompt": phone_context[:2], "completion": [{"role": "assistant", "content": vpn_answer}]},
        {"prompt": phone_context, "completion": [{"role": "assistant", "content": correction}]},
    ]

    manifest = json.loads(files["manifest.json"])
    assert manifest["removed"] == {
        "outside_time_window": 1,
        "other_model_version": 1,
        "other_channel": 0,
        "rejected_in_review": 1,
        "incomplete_answer": 1,
        "missing_context": 0,
        "pairs_over_cap": 0,
    }
    assert manifest["answers_considered"] == 10 and manifest["answers_used"] == 6
    assert {name: info["rows"] for name, info in manifest["files"].items()} == {
        "kto.jsonl": 7,
        "preference.jsonl": 3,
        "reward.jsonl": 7,
        "sft.jsonl": 2,
    }
    assert manifest["rows_by_source"]["preference.regeneration"] == 1
    assert manifest["rows_by_source"]["preference.same_prompt"] == 1
    assert manifest["rows_by_source"]["preference.correction"] == 1
    assert manifest["redactions"] == {"EMAIL": 3, "PHONE": 1}
    assert turns["parking"].prompt[-1]["content"] not in files["kto.jsonl"].decode()


async def test_export_never_contains_personal_data_raw(
    client: AsyncTestClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    seeded = await seeded_with_admin(sessions)
    files = await export(client, seeded)
    everything = b"".join(files.values()).decode()
    for raw in RAW_PERSONAL_DATA:
        assert raw not in everything
    assert "[EMAIL]" in files["kto.jsonl"].decode() and "[PHONE]" in files["kto.jsonl"].decode()


async def test_the_same_store_exports_byte_identical_files_and_hash(
    client: AsyncTestClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    seeded = await seeded_with_admin(sessions)
    headers = seeded.people["root"].headers
    first = await client.get(EXPORT, headers=headers)
    second = await client.get(EXPORT, headers=headers)
    assert first.content == second.content
    assert first.headers["x-ratchet-export-hash"] == second.headers["x-ratchet-export-hash"]
    manifest = (await client.get(f"{EXPORT}/manifest", headers=headers)).json()
    assert manifest["content_hash"] == first.headers["x-ratchet-export-hash"]

    alice = seeded.people["alice"]
    await client.put(
        f"/api/messages/{seeded.turns['wifi'].answer_id}/feedback", json={"value": "up"}, headers=alice.headers
    )
    changed = await client.get(EXPORT, headers=headers)
    assert changed.headers["x-ratchet-export-hash"] != first.headers["x-ratchet-export-hash"]


async def test_export_is_for_admins_only_and_checks_its_window(
    client: AsyncTestClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    seeded = await seeded_with_admin(sessions)
    for name in ("alice", "olivia"):
        response = await client.get(EXPORT, headers=seeded.people[name].headers)
        assert response.status_code == 403
    response = await client.get(
        EXPORT,
        params={"since": seeded.until.isoformat(), "until": seeded.since.isoformat()},
        headers=seeded.people["root"].headers,
    )
    assert response.status_code == 400 and "since" in response.json()["detail"]


async def test_a_vote_cast_inside_the_window_on_an_older_answer_is_exported(
    client: AsyncTestClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    seeded = await seeded_with_admin(sessions)
    payday = seeded.turns["old"]
    window = {"since": (datetime.now(UTC) - timedelta(minutes=5)).isoformat()}
    before = rows(await export(client, seeded, **window), "kto.jsonl")
    assert not any(row["prompt"] == payday.prompt for row in before)

    dave = seeded.people["dave"]
    response = await client.put(
        f"/api/messages/{payday.answer_id}/feedback", json={"value": "down"}, headers=dave.headers
    )
    assert response.status_code == 200
    after = rows(await export(client, seeded, **window), "kto.jsonl")
    assert [row["label"] for row in after if row["prompt"] == payday.prompt] == [False]


async def test_cli_export_writes_the_same_files_as_the_endpoint(
    client: AsyncTestClient, sessions: async_sessionmaker[AsyncSession], settings: Settings, tmp_path: Path
) -> None:
    seeded = await seeded_with_admin(sessions)
    files = await export(client, seeded, model_version="smollm2-135m-instruct")
    out = tmp_path / "export"
    env = {**os.environ, "RATCHET_DATABASE_URL": settings.resolved_database_url, "RATCHET_DATA_DIR": str(tmp_path)}
    command = [sys.executable, "-m", "server.cli", "data", "export", "--model-version", "smollm2-135m-instruct"]
    result = await anyio.run_process([*command, "--out", str(out)], env=env, check=False)
    assert result.returncode == 0, result.stderr.decode()
    assert {path.name: path.read_bytes() for path in out.iterdir()} == files
    assert json.loads(files["manifest.json"])["content_hash"] in result.stdout.decode()


async def test_deleting_my_data_removes_conversations_votes_and_derived_rows_from_store_and_exports(
    client: AsyncTestClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    seeded = await seeded_with_admin(sessions)
    alice = seeded.people["alice"]
    response = await client.delete("/api/users/me/data", headers=alice.headers)
    assert response.status_code == 200, response.text
    deleted = response.json()
    assert (deleted["conversations"], deleted["messages"], deleted["votes"], deleted["review_decisions"]) == (
        2,
        7,
        4,
        2,
    )

    assert await count(sessions, Conversation, Conversation.user_id == alice.id) == 0
    assert await count(sessions, Message, Message.user_id == alice.id) == 0
    assert await count(sessions, MessageVote, MessageVote.user_id == alice.id) == 0
    assert await count(sessions, VoteHistory, VoteHistory.user_id == alice.id) == 0
    assert await count(sessions, ReviewDecision) == 1  # dave's rejection stays
    assert await count(sessions, Message, Message.user_id == seeded.people["bob"].id) == 4

    everything = b"".join((await export(client, seeded)).values()).decode()
    for text in ("VPN", "router", "daily Wi-Fi code", "Intune"):
        assert text not in everything
    assert "I cannot share passwords." in everything  # bob's answer to the same question stays
    # The account itself stays usable.
    assert (await client.get(f"/api/messages/{uuid.uuid4()}/feedback", headers=alice.headers)).status_code == 404


async def test_admin_deletes_a_users_data_on_their_behalf_and_nobody_else_can(
    client: AsyncTestClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    seeded = await seeded_with_admin(sessions)
    bob = seeded.people["bob"]
    for name in ("alice", "olivia"):
        refused = await client.delete(f"/api/users/{bob.id}/data", headers=seeded.people[name].headers)
        assert refused.status_code == 403
    assert await count(sessions, Message, Message.user_id == bob.id) == 4

    response = await client.delete(f"/api/users/{bob.id}/data", headers=seeded.people["root"].headers)
    assert response.status_code == 200
    assert response.json()["messages"] == 4
    assert await count(sessions, Message, Message.user_id == bob.id) == 0
    assert await count(sessions, Message, Message.user_id == seeded.people["alice"].id) == 7
    missing = await client.delete(f"/api/users/{uuid.uuid4()}/data", headers=seeded.people["root"].headers)
    assert missing.status_code == 404


async def test_cli_delete_user_removes_that_users_data_and_refuses_an_unknown_name(
    sessions: async_sessionmaker[AsyncSession], settings: Settings, tmp_path: Path
) -> None:
    seeded = await seeded_with_admin(sessions)
    env = {
        **os.environ,
        "RATCHET_DATABASE_URL": settings.database_url.get_secret_value(),
        "RATCHET_DATA_DIR": str(tmp_path),
    }
    command = [sys.executable, "-m", "server.cli", "data", "delete-user"]
    messages = await count(sessions, Message)

    unknown = await anyio.run_process([*command, "nobody", "--yes"], env=env, check=False)
    assert unknown.returncode != 0 and "no user named 'nobody'" in unknown.stderr.decode()
    assert await count(sessions, Message) == messages

    result = await anyio.run_process([*command, "bob", "--yes"], env=env, check=False)
    assert result.returncode == 0, result.stderr.decode()
    assert "4 messages" in result.stdout.decode()
    assert await count(sessions, Message, Message.user_id == seeded.people["bob"].id) == 0
    assert await count(sessions, Message) == messages - 4
