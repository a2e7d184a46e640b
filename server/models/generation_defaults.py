"""The generation defaults Ratchet serves for whatever sampling parameter a client leaves out.

One set per served model, and everything that generates for users reads the same one: the app fills them into
every request it sends to vLLM (and stores them with the answer), `ratchet model prepare` writes them into the
prepared checkpoint's ``generation_config.json`` (which vLLM and transformers read as their defaults), and the
nightly job samples with them. For each field the first that is set wins: the ``RATCHET_GENERATION_*`` setting,
the checkpoint's ``generation_config.json`` (a configured model's own recommendation), then ``RECOMMENDED``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from server.settings import Settings

GENERATION_CONFIG = "generation_config.json"
# generation_config.json's name for each of our fields that has one (Hugging Face's names; vLLM maps max_new_tokens
# itself). transformers has no frequency penalty, so it lives in the app's defaults and settings only.
_CONFIG_NAMES = {
    "temperature": "temperature",
    "top_p": "top_p",
    "max_tokens": "max_new_tokens",
    "repetition_penalty": "repetition_penalty",
}


@dataclass(frozen=True)
class GenerationDefaults:
    temperature: float
    top_p: float
    max_tokens: int
    # vLLM's: divides the logit of every token seen in the prompt or the answer; 1.0 is none.
    repetition_penalty: float = 1.0
    # OpenAI's: lowers a token's logit by this much per use in the answer so far (the prompt does not count); 0 is none.
    frequency_penalty: float = 0.0

    def sampling(self) -> dict[str, Any]:
        """As fields of an OpenAI-style chat request. The penalties are sent only when they do something: the
        repetition penalty is a vLLM extension, which other OpenAI-compatible servers may refuse."""
        fields = asdict(self)
        if self.repetition_penalty == 1.0:
            del fields["repetition_penalty"]
        if self.frequency_penalty == 0.0:
            del fields["frequency_penalty"]
        return fields

    def generation_config(self) -> dict[str, Any]:
        """As ``generation_config.json`` fields. ``do_sample`` because transformers is greedy without it."""
        fields = asdict(self)
        return {"do_sample": True, **{key: fields[name] for name, key in _CONFIG_NAMES.items()}}


# SmolLM2-135M-Instruct: its model card recommends a low temperature and top_p 0.9. At vLLM's neutral 1.0/1.0 it
# writes word salad within a paragraph; at the card's values alone it falls into repetition loops (a third of the
# answers of bench/quality.py's tuning set). Of the settings `bench/quality.py --choose` compared on that set, a
# repetition penalty of 1.1 with a frequency penalty of 0.2 looped least, but vLLM's repetition penalty also counts
# the prompt's tokens: with it the model repeated a fact the system prompt gives (an e-mail address, an extension
# number, a product name, a password) in 6 of 16 probes, against 13 with no penalty (`--facts`). OpenAI's frequency
# penalty counts the answer's own tokens only; at 0.4 it looped second least and repeated the fact in 13 of 16.
# The held-out set, never used to choose, is what the README reports.
RECOMMENDED = GenerationDefaults(
    temperature=0.2, top_p=0.9, max_tokens=512, repetition_penalty=1.0, frequency_penalty=0.4
)


def setting_overrides(settings: Settings) -> dict[str, Any]:
    values = {
        "temperature": settings.generation_temperature,
        "top_p": settings.generation_top_p,
        "max_tokens": settings.generation_max_tokens,
        "repetition_penalty": settings.generation_repetition_penalty,
        "frequency_penalty": settings.generation_frequency_penalty,
    }
    return {name: value for name, value in values.items() if value is not None}


def prepared_defaults(settings: Settings) -> GenerationDefaults:
    """What `ratchet model prepare` writes into the checkpoint it converts: Ratchet's recommendation for SmolLM2,
    overridden by the settings."""
    return replace(RECOMMENDED, **setting_overrides(settings))


def checkpoint_defaults(model_dir: Path) -> dict[str, Any]:
    """The sampling fields a checkpoint's ``generation_config.json`` sets (none when it has no such file)."""
    path = model_dir / GENERATION_CONFIG
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:  # an external vLLM's checkpoint need not be on this machine
        return {}
    return dict(_read_checkpoint_defaults(path, stamp))


@lru_cache(maxsize=8)
def _read_checkpoint_defaults(path: Path, stamp: int) -> tuple[tuple[str, Any], ...]:
    config = json.loads(path.read_text())
    return tuple((name, config[key]) for name, key in _CONFIG_NAMES.items() if config.get(key) is not None)


def served_defaults(settings: Settings) -> GenerationDefaults:
    """The defaults filled into every request the app sends for the configured model."""
    return replace(RECOMMENDED, **{**checkpoint_defaults(settings.base_model_dir), **setting_overrides(settings)})


def write_generation_config(model_dir: Path, defaults: GenerationDefaults) -> bool:
    """Put ``defaults`` into the checkpoint's ``generation_config.json``, keeping its other fields (token ids);
    False when they were there already."""
    path = model_dir / GENERATION_CONFIG
    config = json.loads(path.read_text()) if path.exists() else {}
    wanted = {**config, **defaults.generation_config()}
    # No longer only what transformers derived from config.json, which it may then derive again and lose these.
    wanted.pop("_from_model_config", None)
    if wanted == config:
        return False
    # Swapped in whole, so that a vLLM starting meanwhile never reads half a file.
    staging = path.with_name(path.name + ".partial")
    staging.write_text(json.dumps(wanted, indent=2) + "\n")
    staging.replace(path)
    return True
