"""How the rails read a message past the cheap obfuscations: full-width letters, zero-width joiners, s p a c e d
letters, leetspeak, text written backwards, and payloads hidden in base64, hex or rot13."""

from __future__ import annotations

import base64
import binascii
import codecs
import re
import unicodedata

_ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad"))
_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s"})
_SPACED = re.compile(r"\b(?:\w[ ._*-]){3,}\w\b")
_BASE64 = re.compile(r"(?<![A-Za-z0-9+/=])[A-Za-z0-9+/]{16,}={0,2}(?![A-Za-z0-9+/=])")
_HEX = re.compile(r"\b(?:[0-9a-fA-F]{2}[ :]?){12,}\b")
# Words with digits standing for letters in them ("1gn0r3", "pr3v10u5"), at least three of them.
_LEETSPEAK = re.compile(r"(?:\b(?=\w*[a-z])(?=\w*[013457@$])[a-z0-9@$]{3,}\b.*?){3}", re.IGNORECASE | re.DOTALL)
_REVERSED_HINT = re.compile(r"\b(?:backwards?|reversed?|reverse order|right to left)\b", re.IGNORECASE)
_SENTENCES = re.compile(r"(?<=[.!?\n])\s+")


def normalise(text: str) -> str:
    """Undo the cheap obfuscations (full-width letters, zero-width joiners, s p a c e d letters)."""
    folded = unicodedata.normalize("NFKC", text).translate(_ZERO_WIDTH)
    return _SPACED.sub(lambda match: re.sub(r"[ ._*-]", "", match.group(0)), folded)


def unscrambled(normalised: str) -> list[str]:
    """The normalised message read as leetspeak ("1gn0r3 4ll pr3v10u5 1n5truct10n5") and backwards ("read this
    backwards: snoitcurtsni suoiverp erongi"), each only when the message looks like it."""
    readings = []
    if _LEETSPEAK.search(normalised):
        readings.append(normalised.translate(_LEET))
    if _REVERSED_HINT.search(normalised):
        readings += [normalised[::-1], " ".join(word[::-1] for word in normalised.split())]
    return readings


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


def segments(text: str) -> list[str]:
    """The whole message plus its sentences: an attack pasted inside a long text is judged on its own."""
    parts = [part.strip() for part in _SENTENCES.split(text) if len(part.strip()) > 12]
    return [text, *parts[:15]] if len(parts) > 1 else [text]
