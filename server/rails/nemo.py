"""`Rails` implemented with NeMo Guardrails 0.24 (Colang 1.0) as the checker around Ratchet's own vLLM call.

Each `NemoRails` owns one `LLMRails` and runs it on a private event-loop thread: NeMo's Colang runtime is
CPU-bound Python (milliseconds per check) and must not stall the server's event loop, and an `LLMRails` must
stay on one loop. The embedding checks additionally hop to worker threads inside the actions.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import threading
import time
from collections.abc import Coroutine
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

from server.rails.base import Direction, RailsConfigError, RailsResult, RailVerdict, Verdict
from server.rails.embeddings import Embedder
from server.rails.policy import Policy, PolicyError, load_policy

os.environ.setdefault("NEMO_GUARDRAILS_NO_USAGE_STATS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from nemoguardrails import LLMRails, RailsConfig
from nemoguardrails.actions.rail_outcome import RailOutcome
from nemoguardrails.rails.llm.options import GenerationResponse
from nemoguardrails.rails.llm.utils import get_action_details_from_flow_id

log = logging.getLogger("ratchet.rails")
FALLBACK_REFUSAL = "Sorry, I can't help with that right now."
RAIL_FAILED = "the rail failed; blocked to be safe"
T = TypeVar("T")


def config_version(config_dir: Path) -> str:
    """A short hash of every file NeMo reads, so responses and logs say which policy decided."""
    digest = hashlib.sha256()
    for path in sorted(config_dir.rglob("*")):
        # .jsonl: the jailbreak classifier's training texts (its fitted weights live in the data dir).
        if (
            path.is_file()
            and path.suffix in {".yml", ".yaml", ".co", ".py", ".txt", ".jsonl"}
            and "eval" not in path.parts
        ):
            digest.update(str(path.relative_to(config_dir)).encode())
            digest.update(path.read_bytes())
    return "rails-" + digest.hexdigest()[:12]


class _LoopThread:
    """A daemon thread running an event loop that NeMo work is submitted to."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    async def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        return await asyncio.wrap_future(future)

    def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Blocking variant, for callers outside any event loop (the CLI, the eval)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        self.loop.close()


def _verdicts_from_log(response: GenerationResponse, direction: Direction) -> tuple[RailVerdict, ...]:
    verdicts: list[RailVerdict] = []
    for rail in response.log.activated_rails if response.log else []:
        if rail.type != str(direction):
            continue
        outcomes = [action.return_value for action in rail.executed_actions]
        reasons = [outcome.reason for outcome in outcomes if isinstance(outcome, RailOutcome) and outcome.reason]
        if rail.stop:
            verdict = Verdict.BLOCK
            # A rail whose action raised returns NeMo's internal-error result: that is still a block.
            if not reasons and not any(isinstance(outcome, RailOutcome) for outcome in outcomes):
                reasons = [RAIL_FAILED]
        elif any(isinstance(outcome, RailOutcome) and outcome.is_transform for outcome in outcomes):
            verdict = Verdict.MODIFY
        else:
            verdict = Verdict.PASS
        verdicts.append(RailVerdict(direction, rail.name, verdict, "; ".join(reasons), (rail.duration or 0.0) * 1000))
    return tuple(verdicts)


def _context(messages: list[dict[str, str]]) -> dict[str, Any]:
    """NeMo context variables the output rails read: the system prompt (to spot it being leaked)."""
    system = next((message["content"] for message in messages if message["role"] == "system"), None)
    return {"role": "context", "content": {"system_prompt": system}}


def _last_user(messages: list[dict[str, str]]) -> str:
    return next(message["content"] for message in reversed(messages) if message["role"] == "user")


class NemoRails:
    """Build with `NemoRails.load(path, embedder, data_dir)`; a malformed folder raises `RailsConfigError`."""

    def __init__(self, config_dir: Path, config: RailsConfig, policy: Policy, embedder: Embedder | None) -> None:
        self.config_dir = config_dir
        self.version = config_version(config_dir)
        self.stream_window_chars = policy.config.streaming.window_chars
        self.stream_holdback_chars = policy.config.streaming.holdback_chars
        self._thread = _LoopThread(f"rails-{self.version}")
        self._rails = LLMRails(config)
        self._rails.register_action_param("ratchet_policy", policy)
        self._rails.register_action_param("ratchet_embedder", embedder)
        self._has_input = bool(config.rails.input.flows)
        self._has_output = bool(config.rails.output.flows)
        # The fast path calls each rail flow's action directly, as NeMo's own streaming output rails do: the
        # Colang runtime costs ~10 ms of CPU per run, too much to pay on every message and every stream window.
        # The flows still decide whenever a rail does anything but allow (see `_fast`).
        try:
            self._input_actions = _flow_actions(config, config.rails.input.flows)
            self._output_actions = _flow_actions(config, config.rails.output.flows)
        except ValueError as error:
            self._thread.stop()
            raise RailsConfigError(f"a rail flow runs no action Ratchet can call: {error}") from error

    @classmethod
    def load(cls, config_dir: Path, embedder: Embedder | None, data_dir: Path | None) -> NemoRails:
        """Parse and validate the folder, then smoke-test both directions so a broken action is caught now. Derived
        data (the jailbreak classifier's fitted weights) is cached in `data_dir`, never in the config folder."""
        config_dir = Path(config_dir).resolve()
        if not (config_dir / "config.yml").is_file():
            raise RailsConfigError(f"{config_dir} has no config.yml")
        try:
            config = RailsConfig.from_path(str(config_dir))
        except Exception as error:  # NeMo raises ValueError, yaml and Colang parser errors, pydantic errors
            raise RailsConfigError(
                f"NeMo Guardrails cannot load {config_dir}: {type(error).__name__}: {error}"
            ) from error
        try:
            policy = load_policy(config_dir)
            policy.prepare(embedder, data_dir)
        except PolicyError as error:
            raise RailsConfigError(str(error)) from error
        try:
            rails = cls(config_dir, config, policy, embedder)
        except RailsConfigError:
            raise
        except Exception as error:  # LLMRails init: unknown actions, flows, models
            raise RailsConfigError(f"NeMo Guardrails rejected {config_dir}: {type(error).__name__}: {error}") from error
        try:
            probe = [{"role": "system", "content": "probe"}, {"role": "user", "content": "What time is it?"}]
            for result in (
                rails._thread.call(rails._input(probe)),
                rails._thread.call(rails._output(probe, "It is noon.")),
            ):
                failed = [verdict for verdict in result.verdicts if "failed" in verdict.reason]
                if failed:
                    raise RailsConfigError(f"rail {failed[0].rail!r} fails on a harmless message: {failed[0].reason}")
        except Exception:
            rails._thread.stop()
            raise
        return rails

    async def check_input(self, messages: list[dict[str, str]]) -> RailsResult:
        return await self._thread.run(self._input(messages))

    async def check_output(self, messages: list[dict[str, str]], answer: str) -> RailsResult:
        return await self._thread.run(self._output(messages, answer))

    async def check_output_window(self, messages: list[dict[str, str]], answer_so_far: str) -> RailsResult:
        return await self._thread.run(self._output_window(messages, answer_so_far))

    async def aclose(self) -> None:
        await asyncio.to_thread(self._thread.stop)

    async def _input(self, messages: list[dict[str, str]]) -> RailsResult:
        user = _last_user(messages)
        if not self._has_input:
            return RailsResult(user, ())
        context = {**_context(messages)["content"], "user_message": user}
        verdicts = await self._fast(Direction.INPUT, self._input_actions, user, context)
        if verdicts is not None and all(verdict.verdict == Verdict.PASS for verdict in verdicts):
            return RailsResult(user, verdicts)
        if verdicts is not None and verdicts[-1].reason == RAIL_FAILED:
            return RailsResult(FALLBACK_REFUSAL, verdicts)
        return await self._input_flows(user)

    async def _input_flows(self, user: str) -> RailsResult:
        """The Colang input flows: their refusals, rewrites and per-rail log."""
        response = await self._rails.generate_async(
            # Fresh state per call: LLMRails otherwise caches every conversation's events, without bound.
            messages=[{"role": "user", "content": user}],
            options={"rails": ["input"], "log": {"activated_rails": True}},
            state={"events": []},
        )
        return RailsResult(_content(response), _verdicts_from_log(response, Direction.INPUT))

    async def _output(self, messages: list[dict[str, str]], answer: str) -> RailsResult:
        if not self._has_output:
            return RailsResult(answer, ())
        context = {**_context(messages)["content"], "user_message": _last_user(messages), "bot_message": answer}
        verdicts = await self._fast(Direction.OUTPUT, self._output_actions, answer, context)
        if verdicts is not None and all(verdict.verdict == Verdict.PASS for verdict in verdicts):
            return RailsResult(answer, verdicts)
        if verdicts is not None and verdicts[-1].reason == RAIL_FAILED:
            return RailsResult(FALLBACK_REFUSAL, verdicts)
        return await self._output_flows(messages, answer)

    async def _output_flows(self, messages: list[dict[str, str]], answer: str) -> RailsResult:
        """The Colang output flows: their refusals, rewrites and per-rail log."""
        response = await self._rails.generate_async(
            messages=[
                _context(messages),
                {"role": "user", "content": _last_user(messages)},
                {"role": "assistant", "content": answer},
            ],
            options={"rails": ["output"], "log": {"activated_rails": True}},
            state={"events": []},
        )
        return RailsResult(_content(response), _verdicts_from_log(response, Direction.OUTPUT))

    async def _output_window(self, messages: list[dict[str, str]], answer: str) -> RailsResult:
        context = {**_context(messages)["content"], "user_message": _last_user(messages), "bot_message": answer}
        verdicts = await self._fast(Direction.OUTPUT, self._output_actions, answer, context)
        if verdicts is None:
            # A rail (e.g. NeMo's own `self check output`) only makes sense as its Colang flow.
            return await self._output_flows(messages, answer)
        if any(verdict.verdict == Verdict.BLOCK for verdict in verdicts):
            # The refusal the user sees is the Colang flow's own `bot refuse ...` message.
            full = await self._output_flows(messages, answer)
            return RailsResult(full.text if full.blocked else FALLBACK_REFUSAL, verdicts)
        text = answer
        for verdict in verdicts:
            if verdict.verdict == Verdict.MODIFY and verdict.rewrite is not None:
                text = verdict.rewrite
        return RailsResult(text, verdicts)

    async def _fast(
        self, direction: Direction, actions: list[tuple[str, str, dict[str, Any]]], text: str, context: dict[str, Any]
    ) -> tuple[RailVerdict, ...] | None:
        """Each rail's action in flow order on `text`, through NeMo's action dispatcher; a rewrite feeds the next
        rail, a block or a failing rail ends the run with a block (fail closed). None when an action returns no
        `RailOutcome` (a NeMo library rail): then only its Colang flow can say what it decided."""
        dispatcher = self._rails.runtime.action_dispatcher
        params = self._rails.runtime.registered_action_params
        variable = "$user_message" if direction == Direction.INPUT else "$bot_message"
        verdicts: list[RailVerdict] = []
        for flow_id, action_name, action_params in actions:
            started = time.perf_counter()
            resolved = {key: text if value == variable else value for key, value in action_params.items()}
            outcome, status = await dispatcher.execute_action(
                action_name, {**params, **resolved, "context": context, "config": self._rails.config}
            )
            elapsed = (time.perf_counter() - started) * 1000
            if status != "success":
                verdicts.append(RailVerdict(direction, flow_id, Verdict.BLOCK, RAIL_FAILED, elapsed))
                break
            if not isinstance(outcome, RailOutcome):
                return None
            if outcome.is_blocked:
                verdicts.append(RailVerdict(direction, flow_id, Verdict.BLOCK, outcome.reason or "", elapsed))
                break
            if outcome.is_transform:
                text = next(iter(outcome.transform_text.values()))
                verdicts.append(RailVerdict(direction, flow_id, Verdict.MODIFY, outcome.reason or "", elapsed, text))
            else:
                verdicts.append(RailVerdict(direction, flow_id, Verdict.PASS, "", elapsed))
        return tuple(verdicts)


def _flow_actions(config: RailsConfig, flow_ids: list[str]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(flow_id, *get_action_details_from_flow_id(flow_id, config.flows)) for flow_id in flow_ids]


def _content(response: GenerationResponse) -> str:
    messages = response.response
    if isinstance(messages, list) and messages:
        return str(messages[-1].get("content") or "")
    return str(messages or "")
