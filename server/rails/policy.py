"""The guardrail policy: the `custom_data.ratchet` section of the rails folder's config.yml, validated, and the data
files it names (the jailbreak patterns, the known attacks, the classifier's training texts).

`load_policy` is the one place a policy is read: by the NeMo rails (`server.rails.nemo`), by the actions when NeMo
runs them on its own (`guardrails/actions.py`) and by the nightly job's rail penalty (`tuning.train`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import numpy as np
import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from server.rails.classifier import ClassifierConfig, ClassifierWeights, TrainingTexts, load_or_fit
from server.rails.embeddings import Embedder

CONFIG_FILE = "config.yml"
SECTION = "custom_data.ratchet"
Model = TypeVar("Model", bound=BaseModel)


class PolicyError(ValueError):
    """The policy is malformed; the message names the file and setting."""


def _compiled(flags: re.RegexFlag) -> BeforeValidator:
    def compile_(value: Any) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return re.compile(value, flags)
        except re.error as error:
            raise ValueError(f"not a regular expression ({error})") from error

    return BeforeValidator(compile_)


# Written by admins in config.yml: case-insensitive.
Pattern = Annotated[re.Pattern[str], _compiled(re.IGNORECASE)]


class _Section(BaseModel):
    # An unknown key is a typo that would silently leave a rule out: refuse it.
    model_config = ConfigDict(extra="forbid", frozen=True)


class JailbreakConfig(_Section):
    similarity_threshold: float = Field(0.75, gt=0, le=1)
    known_attacks_file: str = "known_attacks.txt"
    patterns_file: str = "patterns/jailbreak.yml"
    extra_patterns: tuple[Pattern, ...] = ()
    classifier: ClassifierConfig | None = None


class TopicRule(_Section):
    name: str = Field(min_length=1)
    patterns: tuple[Pattern, ...] = ()
    examples: tuple[str, ...] = ()


class TopicsConfig(_Section):
    similarity_threshold: float = Field(0.70, gt=0, le=1)
    refuse: tuple[TopicRule, ...] = ()


PiiAction = Literal["redact", "block"]


class PersonalDataConfig(_Section):
    input: PiiAction = "redact"
    output: PiiAction = "redact"


class OutputConfig(_Section):
    blocked_patterns: tuple[Pattern, ...] = ()
    system_prompt_leak_chars: int = Field(60, ge=1)


class StreamingConfig(_Section):
    window_chars: int = Field(16, ge=1)
    holdback_chars: int = Field(8, ge=0)


class PolicyConfig(_Section):
    """`custom_data.ratchet` in config.yml (guardrails/config.yml documents every knob)."""

    jailbreak: JailbreakConfig = Field(default_factory=JailbreakConfig)
    topics: TopicsConfig = Field(default_factory=TopicsConfig)
    personal_data: PersonalDataConfig = Field(default_factory=PersonalDataConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    streaming: StreamingConfig = Field(default_factory=StreamingConfig)


def _joined(value: Any) -> Any:
    """A regex written as a list of pieces (fragments included through YAML aliases) is their concatenation."""
    if isinstance(value, list):
        return "".join(str(_joined(piece)) for piece in value)
    return value


class JailbreakPattern(_Section):
    name: str = Field(min_length=1)
    regex: re.Pattern[str]

    @field_validator("regex", mode="before")
    @classmethod
    def _compile(cls, value: Any, info: ValidationInfo) -> Any:
        value = _joined(value)
        if not isinstance(value, str):
            return value
        try:
            return re.compile(value, re.IGNORECASE | re.MULTILINE)
        except re.error as error:
            raise ValueError(f"pattern {info.data.get('name')!r} is not a regular expression ({error})") from error


class JailbreakPatterns(_Section):
    fragments: dict[str, Any] = Field(default_factory=dict, description="Pieces the patterns share (YAML anchors).")
    patterns: tuple[JailbreakPattern, ...] = ()


class JailbreakPatternsFile(_Section):
    # One top-level key: NeMo Guardrails merges every .yml of the folder into its config, and files it does not know
    # land in `custom_data` under their keys.
    jailbreak_patterns: JailbreakPatterns


@dataclass(slots=True)
class Policy:
    """Everything the rails decide by. Built by `load_policy`; `prepare` adds the embeddings the similarity checks
    and the classifier compare against."""

    config: PolicyConfig
    jailbreak_patterns: tuple[JailbreakPattern, ...]
    known_attacks: tuple[str, ...]
    classifier_texts: TrainingTexts | None
    attack_vectors: np.ndarray | None = field(default=None, repr=False)
    topic_vectors: list[tuple[str, np.ndarray]] = field(default_factory=list, repr=False)
    classifier_weights: ClassifierWeights | None = field(default=None, repr=False)

    @property
    def classifier(self) -> ClassifierConfig | None:
        knobs = self.config.jailbreak.classifier
        return knobs if knobs is not None and knobs.enabled else None

    def prepare(self, embedder: Embedder | None, data_dir: Path | None) -> None:
        """Embed the known attacks and topic examples once, so a check embeds only the user's text; load the
        classifier's weights from `data_dir` (or fit and cache them there)."""
        if embedder is None:
            return
        if self.known_attacks:
            self.attack_vectors = embedder.encode(list(self.known_attacks))
        self.topic_vectors = [
            (topic.name, embedder.encode(list(topic.examples))) for topic in self.config.topics.refuse if topic.examples
        ]
        if self.classifier is not None and self.classifier_texts is not None:
            self.classifier_weights = load_or_fit(self.classifier, self.classifier_texts, embedder, data_dir)


def load_policy(config_dir: Path) -> Policy:
    """Read and validate the policy of the rails folder `config_dir`; raises `PolicyError` saying what is wrong."""
    config_dir = Path(config_dir)
    raw = _yaml(config_dir, CONFIG_FILE)
    section = (raw.get("custom_data") or {}).get("ratchet") if isinstance(raw, dict) else None
    if not isinstance(section, dict):
        raise PolicyError(f"{CONFIG_FILE} needs a `{SECTION}` section (see guardrails/config.yml)")
    config = _validated(PolicyConfig, section, CONFIG_FILE, SECTION)
    jailbreak = config.jailbreak
    patterns_file = jailbreak.patterns_file
    patterns = _validated(JailbreakPatternsFile, _yaml(config_dir, patterns_file), patterns_file)
    attacks_file = jailbreak.known_attacks_file
    lines = _read(config_dir, attacks_file).splitlines() if (config_dir / attacks_file).exists() else []
    known = tuple(line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#"))
    texts = None
    if jailbreak.classifier is not None and jailbreak.classifier.enabled:
        texts = TrainingTexts(
            positives=(*known, *_library(config_dir, jailbreak.classifier.attack_files)),
            negatives=_library(config_dir, jailbreak.classifier.benign_files),
        )
    return Policy(config, patterns.jailbreak_patterns.patterns, known, texts)


def _validated(model: type[Model], data: Any, file: str, *within: str) -> Model:
    """`data` as `model`, or a `PolicyError` naming the file and the dotted path of every setting that is wrong."""
    try:
        return model.model_validate(data)
    except ValidationError as error:
        problems = [
            f"{file}: {'.'.join([*within, *map(str, problem['loc'])])}: {problem['msg']}" for problem in error.errors()
        ]
        raise PolicyError("; ".join(problems)) from error


def _read(config_dir: Path, name: str) -> str:
    try:
        return (config_dir / name).read_text()
    except OSError as error:
        raise PolicyError(f"{name}: {error.strerror or error}") from error


def _yaml(config_dir: Path, name: str) -> Any:
    try:
        return yaml.safe_load(_read(config_dir, name))
    except yaml.YAMLError as error:
        raise PolicyError(f"{name}: not valid YAML: {error}") from error


def _library(config_dir: Path, names: tuple[str, ...]) -> tuple[str, ...]:
    """JSONL files of {"text": …} rows (the attack library, the benign training set)."""
    texts: list[str] = []
    for name in names:
        # split("\n"), not splitlines(): texts may hold U+2028 and other characters splitlines() breaks on.
        for number, line in enumerate(_read(config_dir, name).split("\n"), 1):
            if not line.strip():
                continue
            try:
                texts.append(str(json.loads(line)["text"]))
            except (ValueError, KeyError, TypeError) as error:
                raise PolicyError(
                    f"{SECTION}.jailbreak.classifier: {name}:{number}: not a JSON object with a `text`"
                ) from error
    return tuple(texts)
