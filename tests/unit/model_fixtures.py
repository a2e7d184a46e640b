"""Tiny real artefacts for the registry tests: a 2-layer Llama checkpoint as the served base, and adapters built on
it (and on a wider one) with PEFT, saved with save_pretrained, good and bad in each way the registry refuses. Plus
a stand-in for vLLM's adapter routes and a way to put a canary's answers and votes in the store."""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from uuid_utils.compat import uuid7

from server.db.models import Conversation, Message, MessageVote, RailEvent, User
from server.engine.client import EngineRejectedError, EngineUnavailableError
from server.engine.fleet import CorePlacement
from server.engine.launcher import engine_core_sets
from server.models.canary import CanaryPolicy
from server.models.lifecycle import ModelLifecycle
from server.models.live_canary import LiveCanary
from server.models.loading import AdapterLoader
from server.models.merged_serving import MergedVersions
from server.models.reconciler import EngineReconciler
from server.models.registry import ModelRegistry
from server.models.services import ModelRouter
from server.settings import Settings

BASE_NAME = "tiny-base"
HIDDEN = 64


@dataclass(frozen=True)
class TinyModels:
    base: Path
    adapters: dict[str, Path]


def _tiny_llama(hidden: int) -> object:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=hidden // 4,
        vocab_size=128,
    )
    return LlamaForCausalLM(config)


# SmolLM2's ChatML template, for the tiny base's tokenizer.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + "
    "'\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _tiny_tokenizer(directory: Path) -> None:
    """A character-level tokenizer (fits the tiny vocabulary of 128) with ChatML's special tokens and template,
    saved beside the tiny base as a checkpoint's own tokenizer is."""
    import string

    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<|im_start|>", "<|im_end|>"]
    characters = [*string.printable[:95], "\n"]
    vocab = {token: index for index, token in enumerate(specials + characters)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tokenizer.add_special_tokens(specials)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<unk>",
        pad_token="<|im_end|>",
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(directory)


def build_tiny_models(root: Path) -> TinyModels:
    """Everything built once per session (PEFT and transformers take seconds to import)."""
    import torch
    from peft import LoraConfig, PromptTuningConfig, get_peft_model

    torch.manual_seed(0)
    base_dir = root / BASE_NAME
    _tiny_llama(HIDDEN).save_pretrained(base_dir)
    _tiny_tokenizer(base_dir)
    adapters: dict[str, Path] = {}

    def lora(name: str, hidden: int = HIDDEN, **options: object) -> Path:
        model = _tiny_llama(hidden)
        config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
        for key, value in options.items():
            setattr(config, key, value)
        peft_model = get_peft_model(model, config)
        with torch.no_grad():  # a fresh LoRA's B is zero: make it differ from the base, as a trained one does
            for parameter_name, parameter in peft_model.named_parameters():
                if "lora_B" in parameter_name:
                    parameter.normal_(0, 0.02)
        path = root / name
        peft_model.save_pretrained(path)
        adapters[name] = path
        return path

    def soft_prompt(name: str, hidden: int) -> Path:
        config = PromptTuningConfig(num_virtual_tokens=4, task_type="CAUSAL_LM")
        peft_model = get_peft_model(_tiny_llama(hidden), config)
        path = root / name
        peft_model.save_pretrained(path)
        adapters[name] = path
        return path

    lora("good")
    lora("good-2")
    lora("good-3")
    lora("rank-too-high", r=32)
    lora("dora", use_dora=True)
    lora("bias", bias="all")
    lora("saves-lm-head", modules_to_save=["lm_head"])
    lora("other-width", hidden=96)
    soft_prompt("soft-prompt", HIDDEN)
    soft_prompt("soft-prompt-wrong-width", 96)

    named = root / "other-base-named"
    shutil.copytree(adapters["good"], named)
    config = json.loads((named / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "HuggingFaceTB/SmolLM2-360M-Instruct"
    (named / "adapter_config.json").write_text(json.dumps(config))
    adapters["other-base-named"] = named

    for name, damage in (("no-config", "adapter_config.json"), ("no-weights", "adapter_model.safetensors")):
        path = root / name
        shutil.copytree(adapters["good"], path)
        (path / damage).unlink()
        adapters[name] = path
    truncated = root / "truncated"
    shutil.copytree(adapters["good"], truncated)
    weights = truncated / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    adapters["truncated"] = truncated
    return TinyModels(base_dir, adapters)


@dataclass
class FakeEngine:
    """vLLM's adapter routes as the registry sees them: what is loaded, loads that fail or are refused."""

    base_url: str = "http://vllm-test"
    served: set[str] = field(default_factory=lambda: {BASE_NAME})
    down: bool = False
    refuse: set[str] = field(default_factory=set)
    loads: list[str] = field(default_factory=list)
    unloads: list[str] = field(default_factory=list)

    async def served_models(self) -> list[str]:
        if self.down:
            raise EngineUnavailableError(f"vLLM at {self.base_url} unreachable: ConnectError")
        return sorted(self.served)

    async def load_lora_adapter(self, name: str, path: str) -> None:
        if self.down:
            raise EngineUnavailableError(f"vLLM at {self.base_url} unreachable: ConnectError")
        if name in self.refuse:
            raise EngineRejectedError(f"adapter {name} not loaded: unsupported", 500)
        self.loads.append(name)
        self.served.add(name)

    async def unload_lora_adapter(self, name: str) -> None:
        self.unloads.append(name)
        self.served.discard(name)

    def restart(self) -> None:
        """A fresh vLLM: only the base model."""
        self.served = {BASE_NAME}


@dataclass
class FakeFleet:
    """The engines of merged versions as the registry sees them: started, ready once the test says so, stopped."""

    starting: dict[str, Path] = field(default_factory=dict)
    ready_names: set[str] = field(default_factory=set)
    started: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    ready_at_once: bool = False
    placement: CorePlacement = field(
        default_factory=lambda: CorePlacement(engine_core_sets(Settings(vllm_cpu_layout="split")))
    )

    def names(self) -> set[str]:
        return set(self.starting)

    def cores_for(self, name: str) -> tuple[int, ...]:
        return self.placement.place(name)

    async def start(self, name: str, model_dir: Path) -> None:
        if name in self.starting:
            return
        self.starting[name] = model_dir
        self.started.append(name)
        if self.ready_at_once:
            self.ready_names.add(name)

    def ready(self, name: str) -> bool:
        return name in self.ready_names and name in self.starting

    def reason(self, name: str) -> str:
        return "vLLM is starting"

    def client(self, name: str) -> object | None:
        return f"engine-of-{name}" if self.ready(name) else None

    async def wait_ready(self, name: str, timeout_s: float) -> bool:
        return self.ready(name)

    async def stop(self, name: str) -> None:
        self.placement.release(name)
        self.starting.pop(name, None)
        self.ready_names.discard(name)
        self.stopped.append(name)

    async def close(self) -> None:
        for name in list(self.starting):
            await self.stop(name)


async def add_users(sessions: async_sessionmaker[AsyncSession], prefix: str, count: int) -> list[UUID]:
    ids = [uuid7() for _ in range(count)]
    async with sessions.begin() as session:
        session.add_all(User(id=user_id, name=f"{prefix}-{index}") for index, user_id in enumerate(ids))
    return ids


async def answers_with_votes(
    sessions: async_sessionmaker[AsyncSession],
    version: str,
    users: list[UUID],
    ups_per_user: int,
    downs_per_user: int,
    *,
    trips_per_user: int = 0,
    alias: str = "ratchet",
    at: datetime | None = None,
) -> None:
    """Each user asks (ups + downs) questions the version answers, voting on each; the first `trips_per_user`
    answers were stopped by an output rail."""
    at = at or datetime.now(UTC)
    async with sessions.begin() as session:
        for user_id in users:
            conversation = Conversation(id=uuid7(), user_id=user_id, channel="api", title="canary")
            session.add(conversation)
            await session.flush()
            for index in range(ups_per_user + downs_per_user):
                question, answer = uuid7(), uuid7()
                common = {"conversation_id": conversation.id, "user_id": user_id, "channel": "api", "created_at": at}
                session.add(Message(id=question, role="user", content="q", **common))
                await session.flush()
                session.add(
                    Message(
                        id=answer,
                        role="assistant",
                        content="a",
                        status="blocked" if index < trips_per_user else "complete",
                        reply_to_id=question,
                        model_alias=alias,
                        model_version=version,
                        **common,
                    )
                )
                await session.flush()
                value = "up" if index < ups_per_user else "down"
                session.add(MessageVote(message_id=answer, user_id=user_id, value=value, reasons=[], comment=""))
                if index < trips_per_user:
                    session.add(RailEvent(message_id=answer, direction="output", rail="test", verdict="block"))


_built: TinyModels | None = None


def tiny_models() -> TinyModels:
    """Built once per test process, in a temporary folder removed at exit."""
    global _built
    if _built is None:
        root = Path(tempfile.mkdtemp(prefix="ratchet-tiny-"))
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        _built = build_tiny_models(root)
    return _built


def model_settings(settings: Settings, **overrides: object) -> Settings:
    """The test database and data dir of `settings`, serving the tiny base."""
    values: dict[str, object] = {
        "data_dir": settings.data_dir,
        "database_url": settings.database_url,
        "vllm_url": settings.vllm_url,
        "base_model": tiny_models().base,
        "base_model_name": BASE_NAME,
        "vllm_max_lora_rank": 16,
        "vllm_max_loras": 4,
        "token_cache_ttl_s": 0,
        "model_drain_grace_s": 10,
        **overrides,
    }
    return Settings(**values)


# Small minimums, so that a few dozen seeded votes decide; the statistics are canary.py's own tests' business.
TEST_POLICY = CanaryPolicy(min_votes_per_arm=20, min_users_per_arm=5, min_requests_per_arm=20)


@dataclass
class Serving:
    """The registry's serving side wired as the app wires it, on a FakeEngine and a clock the test moves."""

    settings: Settings
    sessions: async_sessionmaker[AsyncSession]
    engine: FakeEngine
    router: ModelRouter
    registry: ModelRegistry
    lifecycle: ModelLifecycle
    reconciler: EngineReconciler
    canary: LiveCanary
    now: list[float]
    fleet: FakeFleet | None = None

    async def sync(self) -> None:
        await self.router.refresh()
        await self.reconciler.reconcile()

    async def gated(self, adapter: str, name: str, kind: str = "lora") -> str:
        await self.registry.register_candidate(
            name,
            kind,
            tiny_models().adapters[adapter],
            parent=BASE_NAME,
            run_id="run-1",
            data_hash="d" * 64,
            method="kto",
            method_settings={"kto_beta": 0.1},
            metrics={"steps": 1},
        )
        await self.registry.record_gate_results(name, [{"name": "win_rate", "passed": True}], passed=True)
        return name


async def serving(
    settings: Settings, sessions: async_sessionmaker[AsyncSession], merged: bool = False, **overrides: object
) -> Serving:
    """`merged`: LoRA versions served merged, each by an engine of a FakeFleet (their checkpoints really merged)."""
    settings = model_settings(settings, **overrides)
    engine = FakeEngine()
    fleet = FakeFleet() if merged else None
    versions = MergedVersions(settings, fleet) if fleet is not None else None  # type: ignore[arg-type]
    loader = AdapterLoader([engine], merged=versions)  # type: ignore[list-item]
    router = ModelRouter(sessions, settings)
    await router.ensure_base_registered()
    lifecycle = ModelLifecycle(sessions, settings, loader, TEST_POLICY)
    now = [0.0]
    reconciler = EngineReconciler(sessions, settings, loader, router, clock=lambda: now[0])
    return Serving(
        settings,
        sessions,
        engine,
        router,
        ModelRegistry(sessions, settings, TEST_POLICY),
        lifecycle,
        reconciler,
        LiveCanary(sessions, lifecycle),
        now,
        fleet,
    )
