"""Ratchet's rails as NeMo Guardrails actions (loaded by NeMo from this folder).

Each action returns a `RailOutcome` and accepts `**kwargs`, which NeMo's streaming output rails require. The
checks themselves live in `server/rails/checks.py`; the policy (`custom_data.ratchet` in config.yml and the files it
names) is read by `server.rails.policy.load_policy`. Ratchet registers the loaded policy and the shared embedder as
action parameters (`ratchet_policy`, `ratchet_embedder`); under plain NeMo (e.g. `nemoguardrails chat --config
guardrails`) the actions load them on first use, with the classifier's weights cached in RATCHET_DATA_DIR.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nemoguardrails.actions import action
from nemoguardrails.actions.rail_outcome import RailOutcome, TransformTarget
from nemoguardrails.rails.llm.config import RailsConfig

from server.rails.checks import Check, check_jailbreak, check_output_policy, check_personal_data, check_topics
from server.rails.embeddings import Embedder, shared_embedder
from server.rails.policy import Policy, load_policy
from server.settings import get_settings

_standalone: dict[int, Policy] = {}


def _policy(ratchet_policy: Policy | None, config: RailsConfig | None) -> Policy:
    if ratchet_policy is not None:
        return ratchet_policy
    if config is None:
        raise RuntimeError("the Ratchet rails need either the ratchet_policy action parameter or the config")
    key = id(config)
    if key not in _standalone:
        policy = load_policy(Path(config.config_path or "."))
        policy.prepare(shared_embedder(), get_settings().data_dir)
        _standalone[key] = policy
    return _standalone[key]


def _outcome(check: Check, target: TransformTarget | None = None) -> RailOutcome:
    metadata = {} if check.score is None else {"score": round(check.score, 3)}
    if not check.flagged:
        return RailOutcome.allow(metadata=metadata)
    if target is not None and check.text is not None:
        return RailOutcome.transform([(target, check.text)], reason=check.reason, metadata=metadata)
    return RailOutcome.block(reason=check.reason, metadata=metadata)


async def _embedding_check(
    check: Callable[[str, Policy, Embedder], Check],
    text: str | None,
    config: RailsConfig | None,
    ratchet_policy: Policy | None,
    ratchet_embedder: Embedder | None,
) -> RailOutcome:
    policy = _policy(ratchet_policy, config)
    embedder = ratchet_embedder if ratchet_policy is not None else shared_embedder()
    # The embedding forward pass takes milliseconds of CPU: run it on a worker thread, not the event loop.
    return _outcome(await asyncio.to_thread(check, text or "", policy, embedder))


@action(is_system_action=True)
async def ratchet_check_jailbreak(
    text: str | None = None,
    config: RailsConfig | None = None,
    ratchet_policy: Policy | None = None,
    ratchet_embedder: Embedder | None = None,
    **kwargs: Any,
) -> RailOutcome:
    return await _embedding_check(check_jailbreak, text, config, ratchet_policy, ratchet_embedder)


@action(is_system_action=True)
async def ratchet_check_topics(
    text: str | None = None,
    config: RailsConfig | None = None,
    ratchet_policy: Policy | None = None,
    ratchet_embedder: Embedder | None = None,
    **kwargs: Any,
) -> RailOutcome:
    return await _embedding_check(check_topics, text, config, ratchet_policy, ratchet_embedder)


@action(is_system_action=True)
async def ratchet_check_input_personal_data(
    text: str | None = None,
    config: RailsConfig | None = None,
    ratchet_policy: Policy | None = None,
    **kwargs: Any,
) -> RailOutcome:
    policy = _policy(ratchet_policy, config)
    target = TransformTarget.USER_MESSAGE if policy.config.personal_data.input == "redact" else None
    return _outcome(check_personal_data(text or ""), target)


@action(is_system_action=True)
async def ratchet_check_output_personal_data(
    text: str | None = None,
    config: RailsConfig | None = None,
    ratchet_policy: Policy | None = None,
    **kwargs: Any,
) -> RailOutcome:
    policy = _policy(ratchet_policy, config)
    target = TransformTarget.BOT_MESSAGE if policy.config.personal_data.output == "redact" else None
    return _outcome(check_personal_data(text or ""), target)


@action(is_system_action=True)
async def ratchet_check_output_policy(
    text: str | None = None,
    context: dict[str, Any] | None = None,
    config: RailsConfig | None = None,
    ratchet_policy: Policy | None = None,
    **kwargs: Any,
) -> RailOutcome:
    policy = _policy(ratchet_policy, config)
    system_prompt = (context or {}).get("system_prompt")
    return _outcome(check_output_policy(text or "", policy, system_prompt))
