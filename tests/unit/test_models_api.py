"""The registry's HTTP API on the real app (real database; its vLLM unreachable): ops and admins read, admins
act with a reason, bad input is a 4xx that changes nothing, and vLLM being down is a 503 that changes nothing."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from litestar.testing import AsyncTestClient
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.db.models import ModelAlias, ModelVersion, Role
from server.models.artefacts import file_hashes
from tests.unit.feedback_store import BASE_VERSION, person

API = "/api/models"


async def a_gated_and_a_canary(sessions: async_sessionmaker[AsyncSession], adapters: Path) -> None:
    """Two adapter versions as the registry leaves them: one through the gates, one canarying on `ratchet`."""
    async with sessions.begin() as session:
        for name, status in (("ratchet-kto-1", "gated"), ("ratchet-kto-2", "canary")):
            (adapters / name).mkdir(parents=True)
            (adapters / name / "adapter_config.json").write_text('{"peft_type": "LORA"}')
            session.add(
                ModelVersion(
                    name=name,
                    kind="lora",
                    base_model="/models/base",
                    adapter_path=str(adapters / name),
                    artefact_hashes=file_hashes(adapters / name),
                    status=status,
                    parent_name=BASE_VERSION,
                    run_id="20261201-010000-abcd",
                    method="kto",
                    gate_results=[{"name": "win_rate", "passed": True, "value": 0.61, "threshold": 0.5}],
                    gates_passed=True,
                )
            )
        await session.flush()
        await session.execute(
            update(ModelAlias)
            .where(ModelAlias.alias == "ratchet")
            .values(canary_version_name="ratchet-kto-2", canary_fraction=0.2, canary_started_at=datetime.now(UTC))
        )


async def test_ops_read_every_version_with_its_gates_and_the_running_canary(
    client: AsyncTestClient, sessions: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    ops = await person(sessions, "models-ops", Role.OPS)
    await a_gated_and_a_canary(sessions, tmp_path / "adapters")
    listed = await client.get(API, headers=ops.headers)
    assert listed.status_code == 200
    body = listed.json()
    assert body["aliases"] == [
        {
            "alias": "ratchet",
            "version": BASE_VERSION,
            "canary_version": "ratchet-kto-2",
            "canary_fraction": 0.2,
            "canary_started_at": body["aliases"][0]["canary_started_at"],
            "previous_version": None,
        }
    ]
    statuses = {version["name"]: (version["status"], version["active_for"]) for version in body["versions"]}
    assert statuses[BASE_VERSION] == ("active", ["ratchet"]) and statuses["ratchet-kto-1"] == ("gated", [])

    detail = (await client.get(f"{API}/ratchet-kto-2", headers=ops.headers)).json()
    assert detail["gate_results"][0]["threshold"] == 0.5
    assert detail["canary_running"] is True and detail["canary_for"] == ["ratchet"]
    assert detail["canary"]["decision"] == "continue"
    assert detail["canary"]["arms"]["candidate"] == {
        "voters": 0,
        "votes": 0,
        "ups": 0,
        "up_rate": None,
        "requests": 0,
        "trips": 0,
        "errors": 0,
    }
    assert (await client.get(f"{API}/no-such-version", headers=ops.headers)).status_code == 404


async def test_only_admins_act_and_each_action_keeps_its_actor_and_reason(
    client: AsyncTestClient, sessions: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    ops = await person(sessions, "models-ops-2", Role.OPS)
    admin = await person(sessions, "models-admin", Role.ADMIN)
    user = await person(sessions, "models-user")
    await a_gated_and_a_canary(sessions, tmp_path / "adapters")
    assert (await client.get(API, headers=user.headers)).status_code == 403
    body = {"reason": "users dislike its tone"}
    assert (await client.post(f"{API}/ratchet-kto-2/rollback", json=body, headers=ops.headers)).status_code == 403

    rolled_back = await client.post(f"{API}/ratchet-kto-2/rollback", json=body, headers=admin.headers)
    assert rolled_back.status_code == 200
    detail = rolled_back.json()
    assert detail["status"] == "rolled_back" and detail["canary_running"] is False
    last = detail["transitions"][-1]
    assert (last["from_status"], last["to_status"], last["actor"], last["reason"]) == (
        "canary",
        "rolled_back",
        "admin:models-admin",
        "users dislike its tone",
    )
    assert detail["canary"]["decision"] == "continue"  # the figures it stopped with

    again = await client.post(f"{API}/ratchet-kto-2/rollback", json=body, headers=admin.headers)
    assert again.status_code == 409 and "rolled_back" in again.json()["detail"]


async def test_bad_input_is_a_4xx_and_vllm_down_a_503_and_neither_changes_anything(
    client: AsyncTestClient, sessions: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    admin = await person(sessions, "models-admin-2", Role.ADMIN)
    await a_gated_and_a_canary(sessions, tmp_path / "adapters")
    promote = f"{API}/ratchet-kto-1/promote"
    for bad in ({}, {"reason": ""}, {"reason": "x", "surprise": 1}, {"reason": 5}):
        assert (await client.post(promote, json=bad, headers=admin.headers)).status_code == 400, bad
    assert (await client.post(f"{API}/nope/promote", json={"reason": "x"}, headers=admin.headers)).status_code == 404
    pin = {"users": ["nobody-here"], "reason": "testers"}
    assert (await client.post(f"{API}/ratchet-kto-1/pin", json=pin, headers=admin.headers)).status_code == 404

    # The alias already has a canary: refused before vLLM is even asked.
    busy = await client.post(promote, json={"reason": "second canary"}, headers=admin.headers)
    assert busy.status_code == 409 and "already has the canary" in busy.json()["detail"]
    await client.post(f"{API}/ratchet-kto-2/retire", json={"reason": "make room"}, headers=admin.headers)
    down = await client.post(promote, json={"reason": "start the canary"}, headers=admin.headers)
    assert down.status_code == 503 and "vLLM" in down.json()["detail"]
    detail = (await client.get(f"{API}/ratchet-kto-1", headers=admin.headers)).json()
    assert detail["status"] == "gated" and [t["to_status"] for t in detail["transitions"]] == []
