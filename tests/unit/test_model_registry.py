"""The model registry on the real database: candidates stored immutably with their lineage, every bad artefact
refused at registration with its reason, the gates' verdict, and the rules of promotion, rollback, retirement and
pins, with vLLM's adapter routes played by a FakeEngine."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.db.models import ModelAlias, ModelTransition, ModelVersion
from server.engine.client import EngineUnavailableError
from server.models.artefacts import InvalidArtefactError
from server.models.lifecycle import LoadRefusedError, UsersNotFoundError
from server.models.registry import VersionExistsError
from server.models.transitions import InvalidActionError, TransitionRefusedError
from server.settings import Settings
from tests.unit.model_fixtures import BASE_NAME, Serving, add_users, serving, tiny_models


@pytest.fixture
async def models(settings: Settings, sessions: async_sessionmaker[AsyncSession]) -> Serving:
    return await serving(settings, sessions)


async def transitions(sessions: async_sessionmaker[AsyncSession], name: str) -> list[tuple[str | None, str, str]]:
    async with sessions() as session:
        rows = await session.scalars(
            select(ModelTransition)
            .where(ModelTransition.version_name == name)
            .order_by(ModelTransition.created_at, ModelTransition.id)
        )
        return [(row.from_status, row.to_status, row.actor) for row in rows]


async def alias(sessions: async_sessionmaker[AsyncSession]) -> ModelAlias:
    async with sessions() as session:
        row = await session.scalar(select(ModelAlias).where(ModelAlias.alias == "ratchet"))
        assert row is not None
        return row


async def test_a_candidate_is_kept_immutably_with_its_lineage_hashes_and_registration(models: Serving) -> None:
    source = tiny_models().adapters["good"]
    version = await models.registry.register_candidate(
        "ratchet-kto-1",
        "lora",
        source,
        parent=BASE_NAME,
        run_id="20261201-010000-abcd",
        data_hash="a" * 64,
        method="kto",
        method_settings={"kto_beta": 0.1, "lora_r": 8},
        metrics={"steps": 20, "train_loss": 0.41},
    )
    stored = Path(version.adapter_path or "")
    assert stored == (models.settings.adapters_dir / "ratchet-kto-1").resolve()
    weights = (stored / "adapter_model.safetensors").read_bytes()
    assert version.artefact_hashes["adapter_model.safetensors"] == hashlib.sha256(weights).hexdigest()
    shown = await models.registry.describe("ratchet-kto-1")
    assert (shown.status, shown.parent, shown.run_id, shown.method) == (
        "candidate",
        BASE_NAME,
        "20261201-010000-abcd",
        "kto",
    )
    assert shown.method_settings == {"kto_beta": 0.1, "lora_r": 8} and shown.metrics["train_loss"] == 0.41
    assert [(t.from_status, t.to_status, t.actor) for t in shown.transitions] == [(None, "candidate", "nightly")]
    # The run's folder may be cleaned up or rewritten: the version keeps its own copy.
    assert stored != source and (stored / "adapter_config.json").exists()
    assert models.engine.loads == []


@pytest.mark.parametrize(
    ("adapter", "kind", "reason"),
    [
        ("other-base-named", "lora", "trained on base model 'HuggingFaceTB/SmolLM2-360M-Instruct'"),
        ("other-width", "lora", "trained on another base model"),
        ("rank-too-high", "lora", "LoRA rank 32 is above the server's limit 16"),
        ("dora", "lora", "DoRA"),
        ("bias", "lora", "trains biases"),
        ("saves-lm-head", "lora", "modules_to_save ['lm_head']"),
        ("soft-prompt-wrong-width", "prompt_tuning", "its width must be the base model's hidden size 64"),
        ("no-config", "lora", "has no adapter_config.json"),
        ("no-weights", "lora", "has no adapter_model.safetensors"),
        ("truncated", "lora", "is corrupt"),
        ("soft-prompt", "lora", "needs peft_type LORA"),
    ],
)
async def test_each_bad_artefact_is_refused_with_its_reason_and_changes_nothing(
    models: Serving, adapter: str, kind: str, reason: str
) -> None:
    with pytest.raises(InvalidArtefactError) as refused:
        await models.registry.register_candidate(
            f"bad-{adapter}",
            kind,
            tiny_models().adapters[adapter],
            parent=None,
            run_id=None,
            data_hash="",
            method="kto",
            method_settings={},
            metrics={},
        )
    assert reason in str(refused.value)
    assert refused.value.status_code == 400
    assert [v.name for v in await models.registry.versions()] == [BASE_NAME]
    assert not models.settings.adapters_dir.exists() or not any(models.settings.adapters_dir.iterdir())
    assert models.engine.loads == []


async def test_a_good_soft_prompt_registers(models: Serving) -> None:
    version = await models.registry.register_candidate(
        "ratchet-pt-1",
        "prompt_tuning",
        tiny_models().adapters["soft-prompt"],
        parent=BASE_NAME,
        run_id="r",
        data_hash="",
        method="prompt_tuning",
        method_settings={},
        metrics={},
    )
    assert version.kind == "prompt_tuning" and version.status == "candidate"


async def test_names_are_never_reused_and_must_be_plain(models: Serving) -> None:
    await models.gated("good", "ratchet-kto-1")
    for name, error in (("ratchet-kto-1", VersionExistsError), ("ratchet", VersionExistsError)):
        with pytest.raises(error):
            await models.gated("good-2", name)
    with pytest.raises(InvalidActionError):
        await models.gated("good-2", "../escape")
    with pytest.raises(InvalidActionError, match="finite numbers"):
        await models.registry.register_candidate(
            "ratchet-nan",
            "lora",
            tiny_models().adapters["good-2"],
            parent=None,
            run_id=None,
            data_hash="",
            method="kto",
            method_settings={},
            metrics={"loss": float("nan")},
        )


async def test_the_gates_make_a_candidate_gated_or_rejected_once(models: Serving) -> None:
    passed = await models.gated("good", "ratchet-kto-1")
    shown = await models.registry.describe(passed)
    assert shown.status == "gated" and shown.gates_passed is True
    assert shown.gate_results == [{"name": "win_rate", "passed": True}]
    with pytest.raises(TransitionRefusedError):
        await models.registry.record_gate_results(passed, [], passed=False)

    await models.registry.register_candidate(
        "ratchet-kto-2",
        "lora",
        tiny_models().adapters["good-2"],
        parent=BASE_NAME,
        run_id="r",
        data_hash="",
        method="kto",
        method_settings={},
        metrics={},
    )
    results = [{"name": "win_rate", "passed": True}, {"name": "sycophancy", "passed": False, "value": 0.4}]
    rejected = await models.registry.record_gate_results("ratchet-kto-2", results, passed=False)
    assert rejected.status == "rejected"
    assert (await models.registry.describe("ratchet-kto-2")).transitions[-1].reason == "failed gates: sycophancy"
    with pytest.raises(InvalidActionError):
        await models.registry.record_gate_results("ratchet-kto-2", [], passed=True, actor="somebody")


async def test_a_canary_is_loaded_into_vllm_before_any_user_is_routed_to_it(models: Serving) -> None:
    name = await models.gated("good", "ratchet-kto-1")
    models.engine.down = True
    with pytest.raises(EngineUnavailableError):
        await models.lifecycle.promote(name, "admin:root", "try it")
    assert (await models.registry.get(name)).status == "gated"
    assert (await alias(models.sessions)).canary_version_name is None

    models.engine.down = False
    await models.lifecycle.promote(name, "admin:root", "beats the active version offline")
    assert models.engine.loads == [name]
    target = await alias(models.sessions)
    assert (target.canary_version_name, target.canary_fraction) == (name, 0.2)
    assert (await transitions(models.sessions, name))[-1] == ("gated", "canary", "admin:root")


async def test_a_version_vllm_will_not_load_is_marked_failed(models: Serving) -> None:
    name = await models.gated("good", "ratchet-kto-1")
    models.engine.refuse.add(name)
    with pytest.raises(LoadRefusedError):
        await models.lifecycle.promote(name, "admin:root", "go")
    assert (await models.registry.get(name)).status == "failed"
    assert (await alias(models.sessions)).canary_version_name is None


async def test_an_artefact_changed_after_registration_is_not_loaded(models: Serving) -> None:
    name = await models.gated("good", "ratchet-kto-1")
    stored = Path((await models.registry.get(name)).adapter_path or "")
    shutil.copy(tiny_models().adapters["good-2"] / "adapter_model.safetensors", stored / "adapter_model.safetensors")
    with pytest.raises(LoadRefusedError, match="changed since it was registered"):
        await models.lifecycle.promote(name, "admin:root", "go")
    assert models.engine.loads == []
    assert (await models.registry.get(name)).status == "failed"


async def test_a_soft_prompt_goes_to_canary_and_is_routed_without_loading_anything_into_vllm(models: Serving) -> None:
    name = await models.gated("soft-prompt", "ratchet-pt-1", kind="prompt_tuning")
    await models.lifecycle.promote(name, "admin:root", "go")
    await models.sync()
    assert (await models.registry.get(name)).status == "canary"
    # vLLM gets it as prompt embeddings with each request: nothing is loaded, nothing takes an adapter slot.
    assert models.engine.loads == []
    assert models.router.servable(name)
    # While vLLM is down nobody is routed to it, as for a LoRA version.
    models.engine.down = True
    await models.sync()
    assert not models.router.servable(name)


async def test_a_soft_prompt_changed_after_registration_is_not_put_in_front_of_users(models: Serving) -> None:
    name = await models.gated("soft-prompt", "ratchet-pt-1", kind="prompt_tuning")
    stored = Path((await models.registry.get(name)).adapter_path or "")
    (stored / "adapter_model.safetensors").write_bytes(b"changed")
    with pytest.raises(LoadRefusedError, match="changed since it was registered"):
        await models.lifecycle.promote(name, "admin:root", "go")
    assert (await models.registry.get(name)).status == "failed"


async def test_promotion_retires_the_replaced_version_and_rollback_brings_it_back(models: Serving) -> None:
    first = await models.gated("good", "ratchet-kto-1")
    await models.lifecycle.promote(first, "admin:root", "canary")
    await models.lifecycle.promote(first, "admin:root", "good enough")
    target = await alias(models.sessions)
    assert (target.version_name, target.previous_version_name, target.canary_version_name) == (first, BASE_NAME, None)
    assert (await models.registry.get(BASE_NAME)).status == "retired"
    assert (await models.registry.active_version()).artefact_path == (await models.registry.get(first)).adapter_path

    second = await models.gated("good-2", "ratchet-kto-2")
    await models.lifecycle.promote(second, "admin:root", "canary")
    with pytest.raises(TransitionRefusedError, match="roll the canary back first"):
        await models.lifecycle.rollback(first, "admin:root", "while a canary runs")
    await models.lifecycle.rollback(second, "admin:root", "users dislike it")
    assert (await models.registry.get(second)).status == "rolled_back"

    await models.lifecycle.rollback(first, "admin:root", "regret")
    target = await alias(models.sessions)
    assert (target.version_name, target.previous_version_name) == (BASE_NAME, None)
    assert (await models.registry.get(BASE_NAME)).status == "active"
    assert (await models.registry.get(first)).status == "rolled_back"
    with pytest.raises(TransitionRefusedError, match="no earlier version"):
        await models.lifecycle.rollback(BASE_NAME, "admin:root", "again")


async def test_the_rules_refuse_out_of_order_actions_with_a_reason(models: Serving) -> None:
    await models.registry.register_candidate(
        "ratchet-kto-0",
        "lora",
        tiny_models().adapters["good"],
        parent=None,
        run_id=None,
        data_hash="",
        method="kto",
        method_settings={},
        metrics={},
    )
    with pytest.raises(TransitionRefusedError, match="only a gated version"):
        await models.lifecycle.promote("ratchet-kto-0", "admin:root", "skip the gates")
    with pytest.raises(TransitionRefusedError):
        await models.lifecycle.rollback("ratchet-kto-0", "admin:root", "x")
    with pytest.raises(TransitionRefusedError, match="is active"):
        await models.lifecycle.retire(BASE_NAME, "admin:root", "x")
    with pytest.raises(InvalidActionError, match="reason"):
        await models.lifecycle.retire("ratchet-kto-0", "admin:root", "   ")
    one = await models.gated("good-2", "ratchet-kto-1")
    two = await models.gated("good-3", "ratchet-kto-2")
    await models.lifecycle.promote(one, "admin:root", "canary")
    with pytest.raises(TransitionRefusedError, match="already has the canary"):
        await models.lifecycle.promote(two, "admin:root", "second canary")
    await models.lifecycle.retire(one, "admin:root", "not needed")
    assert (await alias(models.sessions)).canary_version_name is None


async def test_one_adapter_slot_stays_free_for_swaps(
    settings: Settings, sessions: async_sessionmaker[AsyncSession]
) -> None:
    models = await serving(settings, sessions, vllm_max_loras=3)
    await add_users(sessions, "slot", 1)
    first = await models.gated("good", "ratchet-kto-1")
    await models.lifecycle.promote(first, "admin:root", "canary")
    await models.lifecycle.promote(first, "admin:root", "active")
    second = await models.gated("good-2", "ratchet-kto-2")
    await models.lifecycle.promote(second, "admin:root", "canary")
    third = await models.gated("good-3", "ratchet-kto-3")
    with pytest.raises(TransitionRefusedError, match="one slot stays free"):
        await models.lifecycle.pin(third, ["slot-0"], "admin:root", "try it")
    assert third not in models.engine.loads


async def test_pins_route_a_group_of_users_to_a_version(models: Serving) -> None:
    alice, bob, carol = await add_users(models.sessions, "pinned", 3)
    name = await models.gated("good", "ratchet-kto-1")
    with pytest.raises(UsersNotFoundError, match="nobody"):
        await models.lifecycle.pin(name, ["pinned-0", "nobody"], "admin:root", "testers")
    await models.lifecycle.pin(name, ["pinned-0", "pinned-1"], "admin:root", "testers")
    await models.sync()
    assert models.router.resolve("ratchet", alice).version == name
    assert models.router.resolve("ratchet", bob).version == name
    assert models.router.resolve("ratchet", carol).version == BASE_NAME
    shown = await models.registry.describe(name)
    assert [(pin.alias, pin.user) for pin in shown.pins] == [("ratchet", "pinned-0"), ("ratchet", "pinned-1")]
    assert "pinned on ratchet for pinned-0, pinned-1: testers" in shown.transitions[-1].reason

    await models.lifecycle.unpin(name, ["pinned-0"], "admin:root", "done")
    await models.sync()
    assert models.router.resolve("ratchet", alice).version == BASE_NAME
    assert models.router.resolve("ratchet", bob).version == name
    async with models.sessions() as session:
        rejected = ModelVersion(name="ratchet-x", kind="lora", base_model="b", status="rejected")
        session.add(rejected)
        await session.commit()
    with pytest.raises(TransitionRefusedError):
        await models.lifecycle.pin("ratchet-x", ["pinned-2"], "admin:root", "no")
