"""What the shared redaction module catches, and the look-alikes it must leave alone."""

from __future__ import annotations

import pytest

from server.privacy.redaction import redact

CAUGHT = [
    ("Mail me at jane.doe+work@example.co.uk please", "EMAIL"),
    ("call +44 20 7946 0958 tomorrow", "PHONE"),
    ("my cell is (415) 555-2671", "PHONE"),
    ("ring 415-555-2671", "PHONE"),
    ("card 4111 1111 1111 1111 exp 12/29", "CARD_NUMBER"),
    ("pay to GB82 WEST 1234 5698 7654 32", "IBAN"),
    ("SSN 123-45-6789", "US_SSN"),
    ("NI number AB 12 34 56 C", "UK_NINO"),
    ("key AKIAIOSFODNN7EXAMPLE in the config", "SECRET"),
    ("token ghp_abcdefghijklmnopqrstuvwxyz0123456789", "SECRET"),
    ("export OPENAI_API_KEY=sk-proj-abcdefghijklmnopqrstuvwx", "SECRET"),
    ("password: hunter2hunter2", "SECRET"),
    ("-----BEGIN RSA PRIVATE KEY-----\nMIIEabc\n-----END RSA PRIVATE KEY-----", "PRIVATE_KEY"),
]

LEFT_ALONE = [
    "How do I kill a process on port 8080?",
    "Order 123456789 shipped on 2026-11-28 at 10:30.",
    "Upgrade from version 1.2.3 to 2.0.1",
    "The meeting is in room 4.12, call extension 4412.",
    "Card ending 1234 was declined",
    "Revenue grew 12,345,678 dollars in Q3",
    "The password policy requires 12 characters.",
]


@pytest.mark.parametrize(("text", "kind"), CAUGHT)
def test_personal_data_and_secrets_are_redacted(text: str, kind: str) -> None:
    result = redact(text)
    assert kind in result.kinds, result
    assert f"[{kind}]" in result.text


@pytest.mark.parametrize("text", LEFT_ALONE)
def test_ordinary_numbers_and_words_pass_untouched(text: str) -> None:
    result = redact(text)
    assert not result.changed, result.findings
    assert result.text == text


def test_card_number_failing_luhn_is_not_a_card() -> None:
    assert "CARD_NUMBER" not in redact("ref 4111 1111 1111 1112").kinds


def test_redaction_keeps_surrounding_text() -> None:
    result = redact("Contact bob@example.com or +1 415 555 2671 today.")
    assert result.text == "Contact [EMAIL] or [PHONE] today."
