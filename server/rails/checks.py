"""The checks behind Ratchet's rails: deterministic heuristics plus embedding similarity, no LLM.

`guardrails/actions.py` exposes these to NeMo Guardrails as actions; the knobs come from the `custom_data.ratchet`
section of `guardrails/config.yml` (parsed by `Policy.from_config`).
"""

from __future__ import annotations

import base64
import binascii
import codecs
import re
import unicodedata
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

import numpy as np

from server.privacy.redaction import redact
from server.rails.embeddings import Embedder

PiiAction = Literal["redact", "block"]


class PolicyError(ValueError):
    """The `custom_data.ratchet` section of the rails config is malformed."""


# Instruction-override and role-play escapes. Each names the *act* (ignore + instructions, pretend + no rules),
# not a single word, so "ignore the warning" or "kill a process" do not trip them.
_OVERRIDE_NOUNS = (
    r"(?:instructions?|prompts?|rules?|directives?|guidelines?|guardrails?|programming|restrictions?|"
    r"policies|polic(?:y)|constraints?|safety (?:rules|guidelines|filters?)|system message|commands?)"
)
JAILBREAK_PATTERNS: list[tuple[str, str]] = [
    (
        "instruction override",
        r"\b(?:ignore|disregard|forget|override|bypass|skip|drop|abandon|discard|set aside|stop following)\b"
        r"[\w\s,'-]{0,40}?\b(?:previous|prior|above|earlier|preceding|initial|original|system|all|your|any|these|"
        r"those|the|my)\b[\w\s'-]{0,20}?" + _OVERRIDE_NOUNS + r"\b",
    ),
    (
        "prompt extraction",
        r"\b(?:reveal|print|show|repeat|output|display|leak|dump|tell me|give me|write out|what (?:is|are|were))\b"
        r"[\w\s'-]{0,30}?\b(?:system|initial|hidden|original|secret|developer|internal|full)\s+"
        r"(?:prompt|instructions?|message|rules|configuration)",
    ),
    ("prompt extraction", r"\b(?:repeat|print|output)\b.{0,30}\b(?:everything|all|text)\b.{0,20}\babove\b"),
    ("role-play escape", r"\bdo anything now\b|(?-i:\bDAN\b)(?: mode)?|\bjailbroken\b|\bjailbreak mode\b"),
    ("role-play escape", r"\b(?:developer|god|unrestricted|unfiltered|uncensored|evil|dev) mode\b"),
    (
        "role-play escape",
        r"\b(?:pretend|imagine|act as if|act like|roleplay|role-play|play the role|you are now|from now on,? you)"
        r"\b.{0,60}\b(?:no|without|free (?:of|from)|not bound by|don't have|do not have|never follow)\b.{0,25}"
        r"\b(?:rules|restrictions|limits|limitations|filters|guidelines|policies|ethics|morals|censorship|"
        r"content policy)",
    ),
    (
        "role-play escape",
        r"\b(?:act as|you are|you're|become|pretend to be|simulate)\b.{0,20}\b(?:an? )?(?:unfiltered|uncensored|"
        r"unrestricted|amoral|unethical|evil|rogue|jailbroken|unaligned)\b",
    ),
    ("role-play escape", r"\byou are no longer\b.{0,40}\b(?:assistant|ai|bound|ratchet|restricted)"),
    # The stock phrases of the DAN family (DUDE, STAN, …) and their in-the-wild variants.
    (
        "role-play escape",
        r"\bbroken free (?:of|from)\b|\bfree(?:d)? (?:of|from) the (?:typical )?confines\b|"
        r"\bimmerse yourself (?:in|into) the role\b|\bnone of your responses should\b|"
        r"\bcan do anything (?:and everything|now)\b|"
        r"\bnot (?:have to )?abide by (?:the|any) (?:rules|guidelines|polic)",
    ),
    ("role-play escape", r"\b(?:stay|remain|keep) in character\b.{0,80}\b(?:no matter|whatever|even if|always)"),
    (
        "role-play escape",
        r"\b(?:without|no)\s+(?:any\s+)?(?:restrictions|filters|censorship|safety (?:guidelines|filters))\b"
        r".{0,40}\b(?:answer|respond|reply|tell|explain)",
    ),
    (
        "hidden instructions",
        r"<\|?im_(?:start|end)\|?>|<\|(?:system|assistant|user|endoftext)\|>|\[/?(?:INST|SYS)\]|<</?SYS>>",
    ),
    (
        "hidden instructions",
        r"(?:^|\n)\s*(?:#{1,4}\s*|\[)?(?:new |updated |real |actual |hidden )?(?:system(?: prompt| message)?|"
        r"instructions? for the (?:ai|assistant|model)|assistant instructions?)\s*[\]:]\s*\S",
    ),
    (
        "hidden instructions",
        r"\b(?:ai|assistant|model|chatbot|language model|llm)s?\b.{0,40}\b(?:reading|processing|summari[sz]ing)"
        r"\b.{0,40}\b(?:must|should|will now|are instructed to)\b",
    ),
    (
        "hidden instructions",
        r"\b(?:new|updated|revised|real|actual|secret|hidden) (?:instructions?|directives?|orders?|task)\s*[:-]",
    ),
    (
        "encoded payload",
        r"\b(?:decode|decrypt|translate|convert|interpret)\b.{0,40}\b(?:base ?64|rot ?13|hex|binary|morse|"
        r"caesar|reversed|backwards)\b.{0,60}\b(?:follow|execute|obey|do (?:what|as)|run|carry out|comply|perform)\b",
    ),
    (
        "encoded payload",
        r"\b(?:follow|execute|obey|do (?:what|as)|run|carry out|comply with|perform)\b.{0,60}\b(?:base ?64|rot ?13|"
        r"hex(?:adecimal)?|encoded|decoded|reversed|backwards)\b.{0,20}\b(?:instructions?|text|string|message|"
        r"payload|command)",
    ),
]

_ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad"))
_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s"})
_SPACED = re.compile(r"\b(?:\w[ ._*-]){3,}\w\b")
_BASE64 = re.compile(r"(?<![A-Za-z0-9+/=])[A-Za-z0-9+/]{16,}={0,2}(?![A-Za-z0-9+/=])")
_HEX = re.compile(r"\b(?:[0-9a-fA-F]{2}[ :]?){12,}\b")
_SENTENCES = re.compile(r"(?<=[.!?\n])\s+")


def normalise(text: str) -> str:
    """Undo the cheap obfuscations (full-width letters, zero-width joiners, s p a c e d letters)."""
    folded = unicodedata.normalize("NFKC", text).translate(_ZERO_WIDTH)
    return _SPACED.sub(lambda match: re.sub(r"[ ._*-]", "", match.group(0)), folded)


def decoded_payloads(text: str) -> list[str]:
    """Readable text hidden in base64, hex or rot13 inside the message."""
    found: list[str] = []
    for match in _BASE64.finditer(text):
        chunk = match.group(0)
        try:
            raw = base64.b64decode(chunk + "=" * (-len(chunk) % 4), validate=True)
        except (binascii.Error, ValueError):
            continue
        if _readable(raw):
            found.append(raw.decode("utf-8", "ignore"))
    for match in _HEX.finditer(text):
        try:
            raw = bytes.fromhex(re.sub(r"[ :]", "", match.group(0)))
        except ValueError:
            continue
        if _readable(raw):
            found.append(raw.decode("utf-8", "ignore"))
    if re.search(r"\brot ?13\b", text, re.IGNORECASE):
        found.append(codecs.decode(text, "rot13"))
    return found


def _readable(raw: bytes) -> bool:
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    letters = sum(char.isalpha() or char.isspace() for char in decoded)
    return len(decoded) >= 8 and letters / len(decoded) > 0.85 and " " in decoded


@dataclass(frozen=True, slots=True)
class Check:
    """One rail's finding: `reason` is None when the text passed."""

    reason: str | None = None
    score: float | None = None
    text: str | None = None  # the rewritten text, for rails that modify

    @property
    def flagged(self) -> bool:
        return self.reason is not None


@dataclass(frozen=True, slots=True)
class Topic:
    name: str
    patterns: tuple[re.Pattern[str], ...]
    examples: tuple[str, ...]


@dataclass(slots=True)
class Policy:
    """Everything the rails decide by, read from `custom_data.ratchet` in config.yml."""

    jailbreak_threshold: float = 0.75
    known_attacks: tuple[str, ...] = ()
    extra_jailbreak_patterns: tuple[re.Pattern[str], ...] = ()
    topics: tuple[Topic, ...] = ()
    topic_threshold: float = 0.70
    input_pii_action: PiiAction = "redact"
    output_pii_action: PiiAction = "redact"
    blocked_output_terms: tuple[re.Pattern[str], ...] = ()
    system_prompt_leak_chars: int = 60
    stream_window_chars: int = 16
    stream_holdback_chars: int = 8
    # Filled by `prepare`: the embeddings of known attacks and topic examples, computed once per config load.
    _attack_vectors: np.ndarray | None = field(default=None, repr=False)
    _topic_vectors: list[tuple[str, np.ndarray]] = field(default_factory=list, repr=False)

    @classmethod
    def from_config(cls, custom_data: dict[str, Any], config_dir: Path) -> Policy:
        section = custom_data.get("ratchet")
        if not isinstance(section, dict):
            raise PolicyError("config.yml needs a `custom_data.ratchet` section (see guardrails/config.yml)")
        try:
            jailbreak = section.get("jailbreak", {})
            attacks_file = config_dir / jailbreak.get("known_attacks_file", "known_attacks.txt")
            lines = attacks_file.read_text().splitlines() if attacks_file.exists() else []
            known = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
            topics_section = section.get("topics", {})
            topics = tuple(
                Topic(
                    name=str(topic["name"]),
                    patterns=tuple(re.compile(pattern, re.IGNORECASE) for pattern in topic.get("patterns", [])),
                    examples=tuple(str(example) for example in topic.get("examples", [])),
                )
                for topic in topics_section.get("refuse", [])
            )
            pii = section.get("personal_data", {})
            output = section.get("output", {})
            stream = section.get("streaming", {})
            policy = cls(
                jailbreak_threshold=float(jailbreak.get("similarity_threshold", cls.jailbreak_threshold)),
                known_attacks=tuple(known),
                extra_jailbreak_patterns=tuple(
                    re.compile(pattern, re.IGNORECASE) for pattern in jailbreak.get("extra_patterns", [])
                ),
                topics=topics,
                topic_threshold=float(topics_section.get("similarity_threshold", cls.topic_threshold)),
                input_pii_action=pii.get("input", "redact"),
                output_pii_action=pii.get("output", "redact"),
                blocked_output_terms=tuple(
                    re.compile(pattern, re.IGNORECASE) for pattern in output.get("blocked_patterns", [])
                ),
                system_prompt_leak_chars=int(output.get("system_prompt_leak_chars", cls.system_prompt_leak_chars)),
                stream_window_chars=int(stream.get("window_chars", cls.stream_window_chars)),
                stream_holdback_chars=int(stream.get("holdback_chars", cls.stream_holdback_chars)),
            )
        except (KeyError, TypeError, ValueError, AttributeError, re.error, OSError) as error:
            raise PolicyError(f"custom_data.ratchet: {type(error).__name__}: {error}") from error
        for name, value in (("input", policy.input_pii_action), ("output", policy.output_pii_action)):
            if value not in ("redact", "block"):
                raise PolicyError(f"custom_data.ratchet.personal_data.{name} must be redact or block, not {value!r}")
        for name, value in (("jailbreak", policy.jailbreak_threshold), ("topics", policy.topic_threshold)):
            if not 0 < value <= 1:
                raise PolicyError(f"custom_data.ratchet.{name} similarity_threshold must be in (0, 1], not {value}")
        if policy.stream_window_chars < 1 or policy.stream_holdback_chars < 0:
            raise PolicyError("custom_data.ratchet.streaming: window_chars ≥ 1 and holdback_chars ≥ 0")
        return policy

    def prepare(self, embedder: Embedder | None) -> None:
        """Embed the known attacks and topic examples once, so a check embeds only the user's text."""
        if embedder is None:
            return
        if self.known_attacks:
            self._attack_vectors = embedder.encode(list(self.known_attacks))
        self._topic_vectors = [
            (topic.name, embedder.encode(list(topic.examples))) for topic in self.topics if topic.examples
        ]


def _segments(text: str) -> list[str]:
    """The whole message plus its sentences: an attack pasted inside a long text is judged on its own."""
    parts = [part.strip() for part in _SENTENCES.split(text) if len(part.strip()) > 12]
    return [text, *parts[:15]] if len(parts) > 1 else [text]


def _best_similarity(vectors: np.ndarray, references: np.ndarray) -> tuple[float, int]:
    scores = vectors @ references.T
    flat = int(np.argmax(scores))
    return float(scores.flat[flat]), flat % references.shape[0]


def check_jailbreak(text: str, policy: Policy, embedder: Embedder | None) -> Check:
    """Heuristics on the text, its normalised form and any decoded payload; then similarity to known attacks."""
    candidates = [text, normalise(text)]
    payloads = decoded_payloads(text)
    candidates += payloads
    for candidate in candidates:
        for name, pattern in _compiled_jailbreak():
            if pattern.search(candidate):
                where = " in an encoded payload" if candidate in payloads else ""
                return Check(reason=f"{name}{where}")
        # Reasons name a pattern by its position in config.yml, never its text: reasons reach the user.
        for number, pattern in enumerate(policy.extra_jailbreak_patterns, 1):
            if pattern.search(candidate):
                return Check(reason=f"extra pattern #{number}")
    if embedder is None or policy._attack_vectors is None:
        return Check()
    segments = [*_segments(normalise(text)), *payloads]
    score, index = _best_similarity(embedder.encode(segments), policy._attack_vectors)
    if score >= policy.jailbreak_threshold:
        return Check(reason=f"similar to known attack #{index + 1} ({score:.2f})", score=score)
    return Check(score=score)


def check_topics(text: str, policy: Policy, embedder: Embedder | None) -> Check:
    normalised = normalise(text)
    for topic in policy.topics:
        for pattern in topic.patterns:
            if pattern.search(normalised):
                return Check(reason=f"topic {topic.name}")
    if embedder is None or not policy._topic_vectors:
        return Check()
    vectors = embedder.encode(_segments(normalised))
    best_score = 0.0
    for name, references in policy._topic_vectors:
        score, _ = _best_similarity(vectors, references)
        if score >= policy.topic_threshold:
            return Check(reason=f"topic {name} ({score:.2f})", score=score)
        best_score = max(best_score, score)
    return Check(score=best_score)


def check_personal_data(text: str) -> Check:
    """Flags personal data and secrets; `text` is the redacted version."""
    redaction = redact(text)
    if not redaction.changed:
        return Check()
    return Check(reason="personal data: " + ", ".join(redaction.kinds), text=redaction.text)


_PEM_HEADER = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")
_SPECIAL_TOKENS = re.compile(r"<\|im_(?:start|end)\|>|<\|endoftext\|>")


def check_output_policy(answer: str, policy: Policy, system_prompt: str | None) -> Check:
    """Blocks answers that carry a private key (even half-streamed), configured terms, or the system prompt."""
    if _PEM_HEADER.search(answer):
        return Check(reason="private key in the answer")
    if _SPECIAL_TOKENS.search(answer):
        return Check(reason="chat-template control tokens in the answer")
    for number, pattern in enumerate(policy.blocked_output_terms, 1):
        if pattern.search(answer):
            return Check(reason=f"blocked pattern #{number}")
    if system_prompt and _shares_long_substring(answer, system_prompt, policy.system_prompt_leak_chars):
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


@cache
def _compiled_jailbreak() -> list[tuple[str, re.Pattern[str]]]:
    return [(name, re.compile(pattern, re.IGNORECASE | re.MULTILINE)) for name, pattern in JAILBREAK_PATTERNS]
