"""The rerank stage: a cross-encoder orders each query's own first-stage candidates.

Each query is paired only with the candidates its first stage found for it (not, as Search-R1's rerank server
does, with every candidate of the batch); all pairs of a request are scored together (length-sorted batches, up
to :data:`CHUNK_PAIRS` pairs at a time so a large request's token ids stay bounded), and each query's candidates
are sorted by the cross-encoder's logit, ties kept in first-stage order.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from medret.encoders.specs import RerankerSpec, format_rerank_doc

CHUNK_PAIRS = 16384  # pairs tokenized and scored per call of the cross-encoder (whole queries at a time)

Score = Callable[[Sequence[str], Sequence[str]], np.ndarray]


def rerank(spec: RerankerSpec, score: Score, queries: Sequence[str], candidates: Sequence[Sequence[dict[str, Any]]],
           k: int) -> list[list[tuple[int, float]]]:
    """For each query, the ``k`` best of its ``candidates`` (store records with ``title`` and ``content``) as
    ``(candidate position, logit)``, best first; equal logits keep the candidates' order."""
    out: list[list[tuple[int, float]]] = []
    start = 0
    while start < len(queries):
        stop, pairs = start, 0
        while stop < len(queries) and (stop == start or pairs + len(candidates[stop]) <= CHUNK_PAIRS):
            pairs += len(candidates[stop])
            stop += 1
        qs = [queries[i] for i in range(start, stop) for _ in candidates[i]]
        arts = [format_rerank_doc(spec, d.get("title", ""), d["content"]) for i in range(start, stop)
                for d in candidates[i]]
        logits = np.asarray(score(qs, arts), dtype=np.float32)
        at = 0
        for i in range(start, stop):
            s = logits[at: at + len(candidates[i])]
            at += len(candidates[i])
            order = np.argsort(-s, kind="stable")[:k]
            out.append([(int(j), float(s[j])) for j in order])
        start = stop
    return out
