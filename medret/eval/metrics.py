"""Retrieval metrics over ranked id lists and sets of relevant ids (binary relevance)."""
from __future__ import annotations

import math
from typing import Sequence


def recall_at(ranked: Sequence[str], relevant: set[str], k: int) -> float:
    return len(set(ranked[:k]) & relevant) / len(relevant) if relevant else 0.0


def capped_recall_at(ranked: Sequence[str], relevant: set[str], k: int) -> float:
    """BEIR's R_cap@k: hits in the top k over min(k, |relevant|), so that a query with more than k relevant
    documents can reach 1 (PubMedQA: 7.5% of the questions have more than 5 contexts)."""
    return len(set(ranked[:k]) & relevant) / min(k, len(relevant)) if relevant else 0.0


def hit_at(ranked: Sequence[str], relevant: set[str], k: int) -> float:
    return 1.0 if set(ranked[:k]) & relevant else 0.0


def mrr(ranked: Sequence[str], relevant: set[str], k: int | None = None) -> float:
    for i, d in enumerate(ranked[:k] if k else ranked, 1):
        if d in relevant:
            return 1.0 / i
    return 0.0


def ndcg_at(ranked: Sequence[str], relevant: set[str], k: int) -> float:
    dcg = sum(1.0 / math.log2(i + 1) for i, d in enumerate(ranked[:k], 1) if d in relevant)
    ideal = sum(1.0 / math.log2(i + 1) for i in range(1, min(k, len(relevant)) + 1))
    return dcg / ideal if ideal else 0.0


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0
