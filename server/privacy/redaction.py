"""Finds and redacts personal data and secrets. Shared by the guardrails (before the model or the user
sees text) and the feedback store (before anything is kept for training).

Caught: e-mail addresses; phone numbers written with a + country code or in common national layouts;
payment card numbers (Luhn-checked); IBANs (mod-97 checked); US SSNs; UK National Insurance numbers;
API keys and secrets with a known shape (AWS, GitHub, Slack, OpenAI, Google, Stripe, JWTs, PEM private
keys, Ratchet tokens) and any value assigned to a key named like password/secret/token/api_key.
Not caught: names, postal addresses, dates of birth, free-form secrets with no telling shape or label,
and numbers in layouts not listed above. See the README's personal-data section.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache


@dataclass(frozen=True, slots=True)
class Finding:
    kind: str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Redaction:
    text: str
    findings: tuple[Finding, ...]

    @property
    def changed(self) -> bool:
        return bool(self.findings)

    @property
    def kinds(self) -> list[str]:
        return sorted({finding.kind for finding in self.findings})


def _luhn_valid(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2 == 1:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _iban_valid(candidate: str) -> bool:
    compact = candidate.replace(" ", "").upper()
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(char, 36)) for char in rearranged)) % 97 == 1


def _digits(text: str) -> str:
    return re.sub(r"\D", "", text)


# (kind, pattern, validator on the matched text or None, group holding the sensitive part)
_PATTERNS: list[tuple[str, str, object, int]] = [
    ("PRIVATE_KEY", r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]+?-----END [A-Z ]*PRIVATE KEY-----", None, 0),
    ("SECRET", r"\bAKIA[0-9A-Z]{16}\b", None, 0),
    ("SECRET", r"\bgh[pousr]_[A-Za-z0-9]{30,}\b", None, 0),
    ("SECRET", r"\bxox[abposr]-[A-Za-z0-9-]{10,}\b", None, 0),
    ("SECRET", r"\bsk-(?:proj-)?[A-Za-z0-9_-]{20,}\b", None, 0),
    ("SECRET", r"\b[sr]k_(?:live|test)_[A-Za-z0-9]{16,}\b", None, 0),
    ("SECRET", r"\bAIza[0-9A-Za-z_-]{35}\b", None, 0),
    ("SECRET", r"\brt_[A-Za-z0-9_-]{30,}\b", None, 0),
    ("SECRET", r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\b", None, 0),
    (
        "SECRET",
        r"(?i)\b(?:password|passwd|pwd|secret|api[_-]?key|access[_-]?key|auth[_-]?token|token|client[_-]?secret)"
        r"\b[\"']?\s*(?:[:=]|\bis\b)\s*[\"']?([^\s\"',;]{6,})",
        None,
        1,
    ),
    ("EMAIL", r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b", None, 0),
    ("IBAN", r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b", _iban_valid, 0),
    ("CARD_NUMBER", r"\b\d(?:[ -]?\d){12,18}\b", lambda text: _luhn_valid(_digits(text)), 0),
    ("US_SSN", r"\b(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}\b", None, 0),
    (
        "UK_NINO",
        r"\b(?!BG|GB|NK|KN|TN|NT|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b",
        None,
        0,
    ),
    # International (+CC …) or national layouts with separators; bare digit runs are left alone
    # (order numbers, versions) unless they carry a + prefix.
    ("PHONE", r"(?<![\w+])\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]?\d{2,4}){1,4}\b", None, 0),
    ("PHONE", r"(?<![\w-])\(\d{3}\) ?\d{3}[ .-]\d{4}\b", None, 0),
    ("PHONE", r"(?<![\w-])\d{3}[.-]\d{3}[.-]\d{4}\b", None, 0),
    ("PHONE", r"(?<![\w-])0\d{2,4}[ -]\d{3,4}[ -]?\d{3,4}\b", None, 0),
]


@cache
def _compiled() -> list[tuple[str, re.Pattern[str], object, int]]:
    return [(kind, re.compile(pattern), validator, group) for kind, pattern, validator, group in _PATTERNS]


def find_personal_data(text: str) -> list[Finding]:
    """Non-overlapping findings in text order; earlier patterns (secrets) win overlaps."""
    taken: list[Finding] = []
    for kind, pattern, validator, group in _compiled():
        for match in pattern.finditer(text):
            start, end = match.span(group)
            if validator is not None and not validator(match.group(group)):  # type: ignore[operator]
                continue
            if any(start < other.end and other.start < end for other in taken):
                continue
            taken.append(Finding(kind, start, end))
    return sorted(taken, key=lambda finding: finding.start)


def redact(text: str) -> Redaction:
    # Most texts redacted per request are empty vote comments: skip the dozen regex scans.
    findings = find_personal_data(text) if text else []
    if not findings:
        return Redaction(text, ())
    pieces: list[str] = []
    cursor = 0
    for finding in findings:
        pieces.append(text[cursor : finding.start])
        pieces.append(f"[{finding.kind}]")
        cursor = finding.end
    pieces.append(text[cursor:])
    return Redaction("".join(pieces), tuple(findings))
