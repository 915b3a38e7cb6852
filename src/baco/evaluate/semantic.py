"""Semantic diversity from sentence embeddings (all-MiniLM-L6-v2 by default), and the Vendi score.

The embedder is passed in (`embedder(texts) -> (n, d) unit vectors`, see embeddings.Embedder),
never created here; the runner embeds every response once, in batches, before the metrics run.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

from baco.evaluate.registry import register_metric


def vendi_score(kernel: np.ndarray) -> float:
    """Vendi score (Friedman & Dieng 2023): exp of the Shannon entropy of the eigenvalues of K / n.

    K is an n x n positive semi-definite similarity matrix with ones on the diagonal. It is 1 when
    all items are identical and n when they are pairwise dissimilar: an "effective number" of items.
    Same value as `vendi_score.vendi.score_K(K)` (q = 1); computed here with scipy's eigvalsh
    because that package reaches into a scipy namespace that SciPy 2.0 removes.
    """
    size = kernel.shape[0]
    eigenvalues = scipy.linalg.eigvalsh(kernel / size)
    positive = eigenvalues[eigenvalues > 1e-12]
    return float(np.exp(-(positive * np.log(positive)).sum()))


def cosine_matrix(embedder, responses: list[str]) -> np.ndarray:
    vectors = np.asarray(embedder(responses), dtype=np.float64)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit = vectors / np.where(norms == 0, 1.0, norms)
    return np.clip(unit @ unit.T, -1.0, 1.0)


@register_metric("embedding-distance", kind="diversity", higher_is_better=True, needs=("embedder",),
                 group="semantic", library="transformers (all-MiniLM-L6-v2) + numpy",
                 help="mean cosine distance 1 - cos(e_i, e_j) over all pairs of response embeddings")
def embedding_distance(responses: list[str], *, embedder) -> float | None:
    if len(responses) < 2:
        return None
    sims = cosine_matrix(embedder, responses)
    upper = np.triu_indices(len(responses), k=1)
    return float(np.mean(1.0 - sims[upper]))


@register_metric("embedding-vendi", kind="diversity", higher_is_better=True, needs=("embedder",),
                 group="semantic", library="transformers (all-MiniLM-L6-v2) + scipy (Vendi)",
                 help="Vendi score with the cosine kernel of response embeddings; 1 (all alike) to n")
def embedding_vendi(responses: list[str], *, embedder) -> float | None:
    if len(responses) < 2:
        return None
    kernel = cosine_matrix(embedder, responses)
    np.fill_diagonal(kernel, 1.0)
    return vendi_score(kernel)
