"""Reciprocal rank fusion: score(d) = Σ_r 1 / (rrf_k + rank_r(d)), rank 1-based, over the lists that hold d."""
from __future__ import annotations

import numpy as np

RRF_K = 100  # MedRAG's default


def rrf(rankings: list[np.ndarray], k: int, rrf_k: int = RRF_K) -> tuple[np.ndarray, np.ndarray]:
    """Fuse ranked row lists (each best first, one per retriever) into the k best (scores, rows).

    Ties are broken by the best single rank a row reached, then by row, so the order is deterministic.
    """
    score: dict[int, float] = {}
    best: dict[int, int] = {}
    for ranking in rankings:
        for rank, row in enumerate(np.asarray(ranking).tolist(), start=1):
            score[row] = score.get(row, 0.0) + 1.0 / (rrf_k + rank)
            best[row] = min(best.get(row, rank), rank)
    order = sorted(score, key=lambda r: (-score[r], best[r], r))[:k]
    return np.array([score[r] for r in order], dtype=np.float64), np.array(order, dtype=np.int64)
