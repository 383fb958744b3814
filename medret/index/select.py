"""Top-k selection with one deterministic order: score descending, then row ascending."""
from __future__ import annotations

import numpy as np


def select_topk(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (scores, rows) of the k best entries of a 1-d score vector, ties broken by lower row first."""
    if min(k, scores.shape[0]) <= 0:
        return scores[:0], np.zeros(0, dtype=np.int64)
    return select_topk_rows(scores, np.arange(scores.shape[0], dtype=np.int64), k)


def select_topk_rows(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best of candidates ``(scores[i], rows[i])`` (distinct rows, any order): score descending, then row."""
    n = scores.shape[0]
    k = min(k, n)
    if k < n:
        kth = np.partition(scores, n - k)[n - k]
        above = np.nonzero(scores > kth)[0]
        at = np.nonzero(scores == kth)[0]
        need = k - len(above)
        if len(at) > need:  # ties at the k-th place: the lowest rows among them
            at = at[np.argpartition(rows[at], need - 1)[:need]] if need > 0 else at[:0]
        pos = np.concatenate([above, at])
    else:
        pos = np.arange(n)
    pos = pos[np.lexsort((rows[pos], -scores[pos]))]
    return scores[pos], rows[pos]


def merge_topk(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge candidate lists (per query: scores[q], rows[q], any length) into the k best, same order rule."""
    order = np.lexsort((rows, -scores), axis=-1)[..., :k]
    return np.take_along_axis(scores, order, -1), np.take_along_axis(rows, order, -1)
