"""When an answer is degenerate: the learning bench's definition, and the stricter one bench/quality.py judges
answers users see by (it adds run-ons past the token limit and text made of non-words)."""

from __future__ import annotations

import re
from functools import cache

from spellchecker import SpellChecker

# Share of an answer's words that no English dictionary knows, above which it reads as word salad. Answers at
# the served defaults with technical words (mutex, JSON, onboarding, British spellings) stay under 0.15.
NON_WORD_SHARE = 0.25
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")


def looping(answer: str) -> bool:
    """One 4-word phrase three times or more."""
    tokens = " ".join(answer.split()).lower().split()
    grams = [" ".join(tokens[i : i + 4]) for i in range(len(tokens) - 3)]
    return bool(grams) and max(grams.count(gram) for gram in set(grams)) >= 3


def repeats_system_prompt(answer: str, system_prompt: str) -> bool:
    text = " ".join(answer.split()).lower()
    system = " ".join(system_prompt.split()).lower()
    return any(system[start : start + 50] in text for start in range(0, len(system) - 50, 10))


def degenerate(answer: str, system_prompt: str) -> bool:
    """The learning bench's definition: empty, looping, or repeating the system prompt."""
    return not answer.strip() or looping(answer) or repeats_system_prompt(answer, system_prompt)


@cache
def _dictionary() -> SpellChecker:
    return SpellChecker()


def non_word_share(answer: str) -> float:
    words = _WORD.findall(answer.lower())
    if not words:
        return 0.0
    return len(_dictionary().unknown(words)) / len(set(words))


def degenerate_reason(answer: str, finish_reason: str | None, system_prompt: str) -> str | None:
    """The stricter definition: why an answer is degenerate, or None when it is not."""
    if not answer.strip():
        return "empty"
    if looping(answer):
        return "loop"
    if repeats_system_prompt(answer, system_prompt):
        return "system_prompt"
    if finish_reason == "length":
        return "run_on"
    if non_word_share(answer) > NON_WORD_SHARE:
        return "non_words"
    return None
