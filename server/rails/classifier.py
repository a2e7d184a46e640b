"""The jailbreak rail's classifier: a logistic regression over all-MiniLM-L6-v2 embeddings of a message's word
windows, trained on known attacks and an attack library (positives) and benign employee-style texts (negatives).

Its fitted weights are derived data: cached in the data directory (`<RATCHET_DATA_DIR>/rails/classifier.json`, never
in the rails config folder, which may be read-only), keyed by a hash of the training texts and the knobs that shape
them, so only the first load after the library changes fits again (a minute or two on a busy 2-core box).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from server.rails.embeddings import MODEL_NAME, Embedder
from server.rails.normalise import normalise

log = logging.getLogger("ratchet.rails")

# Where, inside a data directory, the fitted weights are cached.
CACHE_FILE = Path("rails") / "classifier.json"
# Decimals kept of the fitted weights: the cache holds them so, and a fresh fit is used so, so that the first load
# after a fit decides exactly as every later load.
DECIMALS = 6


class ClassifierConfig(BaseModel):
    """`jailbreak.classifier` in config.yml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    threshold: float = Field(0.8, gt=0, lt=1, description="A window's attack probability that refuses the message.")
    attack_files: tuple[str, ...] = Field((), description="JSONL files of attacks, relative to the rails folder.")
    benign_files: tuple[str, ...] = Field((), description="JSONL files of benign texts, relative to the rails folder.")
    window_words: int = Field(120, ge=8)
    window_stride: int = Field(100, gt=0)
    max_windows: int = Field(8, ge=1)
    regularisation: float = Field(10.0, gt=0, description="Inverse L2 regularisation strength (scikit-learn's C).")

    @model_validator(mode="after")
    def _trainable(self) -> ClassifierConfig:
        if self.enabled and not (self.attack_files and self.benign_files):
            raise ValueError("the classifier needs attack_files and benign_files")
        if self.window_stride > self.window_words:
            raise ValueError("window_stride must not exceed window_words")
        return self

    def windows(self, text: str) -> list[str]:
        """The text in windows of `window_words` words (MiniLM reads ~256 tokens): at most `max_windows`, spread
        over the whole text, so an attack at the end of a long paste is read too. A short text is one window."""
        words = text.split()
        if len(words) <= self.window_words:
            return [text]
        starts = list(range(0, len(words) - self.window_words + self.window_stride, self.window_stride))
        if len(starts) > self.max_windows:
            last = len(starts) - 1
            starts = [starts[round(i * last / max(self.max_windows - 1, 1))] for i in range(self.max_windows)]
        return [" ".join(words[start : start + self.window_words]) for start in starts]


@dataclass(frozen=True, slots=True)
class TrainingTexts:
    positives: tuple[str, ...]
    negatives: tuple[str, ...]

    def data_hash(self, config: ClassifierConfig) -> str:
        digest = hashlib.sha256(
            json.dumps(
                [MODEL_NAME, config.window_words, config.window_stride, config.max_windows, config.regularisation]
            ).encode()
        )
        for label, texts in (("+", self.positives), ("-", self.negatives)):
            for text in texts:
                digest.update(f"{label}{text}\0".encode())
        return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class ClassifierWeights:
    coef: np.ndarray
    intercept: float

    def probabilities(self, vectors: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(vectors @ self.coef + self.intercept)))


def load_or_fit(
    config: ClassifierConfig, texts: TrainingTexts, embedder: Embedder, data_dir: Path | None
) -> ClassifierWeights:
    """The weights cached in `data_dir` when they were fitted on exactly these texts and knobs (milliseconds), else
    fitted now (embedding every training window: minutes on a busy 2-core box) and cached there. Without a data dir
    (or when it cannot be written) every load fits."""
    data_hash = texts.data_hash(config)
    cache = data_dir / CACHE_FILE if data_dir is not None else None
    if cache is not None and cache.is_file():
        try:
            saved = json.loads(cache.read_text())
            if saved.get("data_hash") == data_hash:
                return ClassifierWeights(np.asarray(saved["coef"], dtype=np.float32), float(saved["intercept"]))
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("unreadable %s: fitting the jailbreak classifier again", cache)
    coef, intercept = _fit(config, texts, embedder)
    saved = {
        "data_hash": data_hash,
        "model": MODEL_NAME,
        "positives": len(texts.positives),
        "negatives": len(texts.negatives),
        "intercept": round(intercept, DECIMALS),
        "coef": [round(float(value), DECIMALS) for value in coef],
    }
    if cache is not None:
        _write_atomically(cache, json.dumps(saved) + "\n")
    return ClassifierWeights(np.asarray(saved["coef"], dtype=np.float32), float(saved["intercept"]))


def _fit(config: ClassifierConfig, texts: TrainingTexts, embedder: Embedder) -> tuple[np.ndarray, float]:
    from sklearn.linear_model import LogisticRegression  # only needed when the library changed

    started = time.perf_counter()
    # Trained on the same windows it judges at run time, normalised the same way.
    pos = [window for text in texts.positives for window in config.windows(normalise(text))]
    neg = [window for text in texts.negatives for window in config.windows(normalise(text))]
    vectors = embedder.encode_bulk([*pos, *neg])
    labels = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    # Balanced: the library has more attack windows than benign ones; the threshold, not the class ratio,
    # should set the trade-off.
    model = LogisticRegression(C=config.regularisation, class_weight="balanced", max_iter=5000).fit(vectors, labels)
    log.info(
        "jailbreak classifier fitted on %d attack and %d benign windows in %.1f s",
        len(pos),
        len(neg),
        time.perf_counter() - started,
    )
    return model.coef_[0], float(model.intercept_[0])


def _write_atomically(path: Path, text: str) -> None:
    """Two processes sharing a data dir (a server and `ratchet rails check`) never read half a file."""
    partial = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            partial.write_text(text)
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
    except OSError as error:  # a read-only data dir still works: the next load fits again
        log.warning("cannot cache the jailbreak classifier in %s: %s", path, error)
