"""LoRA versions served merged (RATCHET_SERVE_LORA_AS=merged): the merged checkpoint computes what base + adapter
computes, each live version gets an engine of its own that is routed to only once ready, a promotion moves no
engine, and the engine of a version that left routing stops only once drained. On the real database, with the
real merge (a child process, on a tiny model) and the engines played by a FakeFleet."""

from __future__ import annotations

import os
from uuid import uuid4

import anyio
import pytest
import torch
from peft import PeftModel
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from transformers import AutoModelForCausalLM

from server.db.models import ModelVersion
from server.engine.client import EngineUnavailableError
from server.models.merging import MARKER, ensure_merged, merged_checkpoint
from server.models.services import ModelLoadingError
from server.settings import Settings
from tests.unit.model_fixtures import BASE_NAME, FakeFleet, Serving, serving, tiny_models


@pytest.fixture
async def models(settings: Settings, sessions: async_sessionmaker[AsyncSession]) -> Serving:
    return await serving(settings, sessions, merged=True)


def fleet_of(models: Serving) -> FakeFleet:
    assert models.fleet is not None
    return models.fleet


async def version(models: Serving, name: str) -> ModelVersion:
    async with models.sessions() as session:
        return (await session.scalars(select(ModelVersion).where(ModelVersion.name == name))).one()


async def made_active(models: Serving, adapter: str, name: str) -> str:
    """Registered, gated, canary, then active (the fleet makes engines ready at once in these tests)."""
    await models.gated(adapter, name)
    await models.lifecycle.promote(name, "admin:root", "canary")
    await models.lifecycle.promote(name, "admin:root", "active")
    return name


async def test_a_merged_checkpoint_computes_what_the_base_with_its_adapter_computes(models: Serving) -> None:
    name = await models.gated("good", "ratchet-kto-1")
    merged_dir = await ensure_merged(models.settings, await version(models, name))
    tiny = tiny_models()
    ids = torch.tensor([[1, 5, 9, 13, 17, 21]])
    with torch.no_grad():
        expected = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(tiny.base, dtype=torch.float32), tiny.adapters["good"]
        )(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32)(ids).logits
        base = AutoModelForCausalLM.from_pretrained(tiny.base, dtype=torch.float32)(ids).logits
    assert not torch.allclose(base, expected, atol=1e-4)  # the adapter changes the model...
    torch.testing.assert_close(merged, expected, atol=1e-4, rtol=1e-4)  # ...and the merge keeps that change
    assert {"tokenizer.json", "generation_config.json", MARKER} <= {path.name for path in merged_dir.iterdir()}
    # Built once: a second load finds it.
    before = os.stat(merged_dir / "model.safetensors").st_mtime_ns
    assert await ensure_merged(models.settings, await version(models, name)) == merged_dir
    assert os.stat(merged_dir / "model.safetensors").st_mtime_ns == before


async def test_a_merged_checkpoint_built_from_other_files_is_not_served(models: Serving) -> None:
    name = await models.gated("good", "ratchet-kto-1")
    registered = await version(models, name)
    merged_dir = await ensure_merged(models.settings, registered)
    (merged_dir / MARKER).write_text('{"artefact_hashes": {"adapter_model.safetensors": "0"}}')
    assert merged_checkpoint(models.settings, registered) is None
    assert await ensure_merged(models.settings, registered) == merged_dir  # rebuilt
    assert merged_checkpoint(models.settings, registered) == merged_dir


async def test_a_canary_gets_traffic_once_its_own_engine_is_ready_and_promotion_moves_no_engine(
    models: Serving,
) -> None:
    fleet = fleet_of(models)
    name = await models.gated("good", "ratchet-kto-1")
    await models.lifecycle.promote(name, "admin:root", "canary")
    await models.sync()
    assert fleet.started == [name] and models.engine.loads == []  # nothing goes into the main engine
    users = [uuid4() for _ in range(300)]
    assert {models.router.resolve("ratchet", user).version for user in users} == {BASE_NAME}
    assert models.reconciler.missing == {}  # a canary still starting costs nobody an answer
    fleet.ready_names.add(name)
    await models.sync()
    assert {models.router.resolve("ratchet", user).version for user in users} == {BASE_NAME, name}

    await models.lifecycle.promote(name, "admin:root", "active")
    await models.sync()
    assert {models.router.resolve("ratchet", user).version for user in users} == {name}
    assert fleet.started == [name] and fleet.stopped == []


async def test_a_canary_is_merged_on_the_cores_its_engine_gets_not_on_the_main_engines(
    models: Serving, monkeypatch: pytest.MonkeyPatch
) -> None:
    commands: list[list[str]] = []
    run_process = anyio.run_process

    async def recorded(command: list[str], **kwargs: object) -> object:
        commands.append(command)
        return await run_process(command, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(anyio, "run_process", recorded)
    fleet = fleet_of(models)
    name = await models.gated("good", "ratchet-kto-1")
    await models.lifecycle.promote(name, "admin:root", "canary")
    await models.sync()
    (merge,) = commands
    cores = fleet.cores_for(name)
    assert merge[merge.index("--cores") + 1] == ",".join(map(str, cores))
    if len(fleet.placement.core_sets) > 1:
        assert cores != fleet.placement.core_sets[0]  # the main engine's


async def test_an_active_version_whose_engine_is_down_answers_503_and_readiness_says_why(models: Serving) -> None:
    fleet = fleet_of(models)
    fleet.ready_at_once = True
    name = await made_active(models, "good", "ratchet-kto-1")
    await models.sync()
    fleet.ready_names.discard(name)  # its vLLM crashed; its launcher restarts it
    await models.sync()
    with pytest.raises(ModelLoadingError):
        models.router.resolve("ratchet", uuid4())
    assert models.reconciler.missing == {name: "vLLM is starting"}


async def test_the_engine_of_a_replaced_version_stops_after_the_grace(models: Serving) -> None:
    fleet = fleet_of(models)
    fleet.ready_at_once = True
    first = await made_active(models, "good", "ratchet-kto-1")
    second = await made_active(models, "good-2", "ratchet-kto-2")
    await models.sync()
    assert fleet.stopped == []
    models.now[0] += models.settings.model_drain_grace_s + 1
    await models.sync()
    assert fleet.stopped == [first] and fleet.names() == {second}


async def test_a_rollback_returns_to_a_version_whose_engine_is_started_again_first(models: Serving) -> None:
    fleet = fleet_of(models)
    fleet.ready_at_once = True
    first = await made_active(models, "good", "ratchet-kto-1")
    second = await made_active(models, "good-2", "ratchet-kto-2")
    await models.sync()
    models.now[0] += models.settings.model_drain_grace_s + 1
    await models.sync()
    assert fleet.names() == {second}

    await models.lifecycle.rollback(second, "admin:root", "worse on live traffic")
    assert first in fleet.names()  # started (and waited for) before the alias moved
    await models.sync()
    assert {models.router.resolve("ratchet", uuid4()).version for _ in range(50)} == {first}


async def test_a_canary_whose_engine_is_not_serving_yet_is_not_made_active(models: Serving) -> None:
    fleet = fleet_of(models)
    name = await models.gated("good", "ratchet-kto-1")
    await models.lifecycle.promote(name, "admin:root", "canary")
    await models.sync()
    with pytest.raises(EngineUnavailableError) as refused:
        await models.lifecycle.promote(name, "admin:root", "active")  # its vLLM is still starting
    assert refused.value.status_code == 503
    assert (await version(models, name)).status == "canary"
    assert models.router.resolve("ratchet", uuid4()).version == BASE_NAME
    fleet.ready_names.add(name)
    await models.lifecycle.promote(name, "admin:root", "active")
    assert (await version(models, name)).status == "active"
