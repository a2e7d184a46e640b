"""When an answer is degenerate: the learning bench's definition, and the stricter one bench/quality.py judges
answers users see by (it adds run-ons past the token limit and text made of non-words)."""

from __future__ import annotations

import re
from functools import cache

from spellchecker import SpellChecker

# Share of an answer's distinct words that the dictionary does not know, above which it reads as word salad; only
# judged from NON_WORD_MIN_WORDS distinct words on, since a short answer is mostly names and numbers.
NON_WORD_SHARE = 0.25
NON_WORD_MIN_WORDS = 12
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")
# The dictionary spells American; these British endings are words too (metre, colour, organise, analyse).
_BRITISH = [("tre", "ter"), ("our", "or"), ("ise", "ize"), ("isation", "ization"), ("yse", "yze"), ("ogue", "og")]


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


def _american(word: str) -> str:
    for british, american in _BRITISH:
        stem = word.rstrip("sd")
        if stem.endswith(british):
            return stem[: -len(british)] + american
    return word


def non_word_share(answer: str) -> float:
    """Share of the answer's distinct words the dictionary knows in neither spelling (0 below the minimum)."""
    words = set(_WORD.findall(answer.lower()))
    if len(words) < NON_WORD_MIN_WORDS:
        return 0.0
    unknown = _dictionary().unknown(words)
    return len(_dictionary().unknown({_american(word) for word in unknown})) / len(words)


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
