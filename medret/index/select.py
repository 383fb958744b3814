"""Top-k selection with one deterministic order: score descending, then row ascending."""
from __future__ import annotations

import numpy as np


def select_topk(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (scores, rows) of the k best entries of a 1-d score vector, ties broken by lower row first."""
    n = scores.shape[0]
    k = min(k, n)
    if k <= 0:
        return scores[:0], np.zeros(0, dtype=np.int64)
    if k < n:
        kth = np.partition(scores, n - k)[n - k]  # the k-th largest value
        above = np.nonzero(scores > kth)[0]
        at = np.nonzero(scores == kth)[0][: k - len(above)]
        rows = np.concatenate([above, at])
    else:
        rows = np.arange(n)
    order = np.lexsort((rows, -scores[rows]))
    rows = rows[order].astype(np.int64)
    return scores[rows], rows


def merge_topk(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge candidate lists (per query: scores[q], rows[q], any length) into the k best, same order rule."""
    order = np.lexsort((rows, -scores), axis=-1)[..., :k]
    return np.take_along_axis(scores, order, -1), np.take_along_axis(rows, order, -1)
