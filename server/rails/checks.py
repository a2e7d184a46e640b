"""The checks behind Ratchet's rails: deterministic heuristics plus embedding similarity, no LLM.

`guardrails/actions.py` exposes these to NeMo Guardrails as actions; what they decide by is the `Policy` loaded from
the rails folder (`server.rails.policy`): config.yml's `custom_data.ratchet` knobs and the data files they name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from server.privacy.redaction import redact
from server.rails.embeddings import Embedder
from server.rails.normalise import decoded_payloads, normalise, segments, unscrambled
from server.rails.policy import Policy


@dataclass(frozen=True, slots=True)
class Check:
    """One rail's finding: `reason` is None when the text passed."""

    reason: str | None = None
    score: float | None = None
    text: str | None = None  # the rewritten text, for rails that modify

    @property
    def flagged(self) -> bool:
        return self.reason is not None


def _best_similarity(vectors: np.ndarray, references: np.ndarray) -> tuple[float, int]:
    scores = vectors @ references.T
    flat = int(np.argmax(scores))
    return float(scores.flat[flat]), flat % references.shape[0]


def check_jailbreak(text: str, policy: Policy, embedder: Embedder | None) -> Check:
    """Heuristics on the text, its normalised form and any decoded payload; then similarity to known attacks."""
    normalised = normalise(text)
    payloads = decoded_payloads(text)
    # Most messages are their own normalised form: each distinct text is searched once.
    candidates = list(dict.fromkeys([text, normalised, *unscrambled(normalised), *payloads]))
    for candidate in candidates:
        for pattern in policy.jailbreak_patterns:
            if pattern.regex.search(candidate):
                where = " in an encoded payload" if candidate in payloads else ""
                return Check(reason=f"{pattern.name}{where}")
        # Reasons name a pattern by its position in config.yml, never its text: reasons reach the user.
        for number, extra in enumerate(policy.config.jailbreak.extra_patterns, 1):
            if extra.search(candidate):
                return Check(reason=f"extra pattern #{number}")
    classifier, weights = policy.classifier, policy.classifier_weights
    if embedder is None or (policy.attack_vectors is None and weights is None):
        return Check()
    parts = [*segments(normalised), *payloads]
    windows: list[str] = []
    if classifier is not None and weights is not None:
        windows = [window for part in (normalised, *payloads) for window in classifier.windows(part)]
    # One batched forward pass for both; a short message is one text (its sentences and windows are itself).
    unique = list(dict.fromkeys([*parts, *windows]))
    vectors = dict(zip(unique, embedder.encode(unique), strict=True))
    score = 0.0
    if policy.attack_vectors is not None:
        score, index = _best_similarity(np.stack([vectors[part] for part in parts]), policy.attack_vectors)
        if score >= policy.config.jailbreak.similarity_threshold:
            return Check(reason=f"similar to known attack #{index + 1} ({score:.2f})", score=score)
    if windows and classifier is not None and weights is not None:
        probability = float(weights.probabilities(np.stack([vectors[part] for part in windows])).max())
        if probability >= classifier.threshold:
            return Check(reason=f"jailbreak classifier ({probability:.2f})", score=probability)
    return Check(score=score)


def check_topics(text: str, policy: Policy, embedder: Embedder | None) -> Check:
    normalised = normalise(text)
    for topic in policy.config.topics.refuse:
        for pattern in topic.patterns:
            if pattern.search(normalised):
                return Check(reason=f"topic {topic.name}")
    if embedder is None or not policy.topic_vectors:
        return Check()
    vectors = embedder.encode(segments(normalised))
    best_score = 0.0
    for name, references in policy.topic_vectors:
        score, _ = _best_similarity(vectors, references)
        if score >= policy.config.topics.similarity_threshold:
            return Check(reason=f"topic {name} ({score:.2f})", score=score)
        best_score = max(best_score, score)
    return Check(score=best_score)


def check_personal_data(text: str) -> Check:
    """Flags personal data and secrets; `text` is the redacted version."""
    redaction = redact(text)
    if not redaction.changed:
        return Check()
    return Check(reason="personal data: " + ", ".join(redaction.kinds), text=redaction.text)


# Not policy but the chat template's and key formats' own markers: no answer may carry them, whatever the config.
_PEM_HEADER = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")
_SPECIAL_TOKENS = re.compile(r"<\|im_(?:start|end)\|>|<\|endoftext\|>")


def check_output_policy(answer: str, policy: Policy, system_prompt: str | None) -> Check:
    """Blocks answers that carry a private key (even half-streamed), configured terms, or the system prompt."""
    if _PEM_HEADER.search(answer):
        return Check(reason="private key in the answer")
    if _SPECIAL_TOKENS.search(answer):
        return Check(reason="chat-template control tokens in the answer")
    for number, pattern in enumerate(policy.config.output.blocked_patterns, 1):
        if pattern.search(answer):
            return Check(reason=f"blocked pattern #{number}")
    leak_chars = policy.config.output.system_prompt_leak_chars
    if system_prompt and _shares_long_substring(answer, system_prompt, leak_chars):
        return Check(reason="the answer repeats the system prompt")
    return Check()


def _shares_long_substring(answer: str, secret: str, length: int) -> bool:
    """Whether any `length`-character window of the (whitespace-normalised) secret appears in the answer."""
    squashed_answer = " ".join(answer.split()).lower()
    squashed_secret = " ".join(secret.split()).lower()
    if len(squashed_secret) < length:
        return False
    step = max(1, length // 4)
    return any(
        squashed_secret[start : start + length] in squashed_answer
        for start in range(0, len(squashed_secret) - length + 1, step)
    )
