"""`medret eval`: Recall@k, Hit@k, MRR and nDCG@10 per retriever and for their RRF fusion on a labelled set."""
from __future__ import annotations

import logging
import time
from typing import Any, Sequence

import numpy as np

from medret import get_retriever
from medret.eval import metrics
from medret.eval.qrels import LabelledSet
from medret.index.fusion import RRF_K, rrf

log = logging.getLogger(__name__)

DEFAULT_KS = (1, 5, 10, 20)


def score_rankings(ranked: Sequence[Sequence[str]], relevant: Sequence[set[str] | frozenset[str]],
                   ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """Mean Recall@k, R_cap@k (hits over min(k, relevant)) and Hit@k for each k, MRR over the whole list, and
    nDCG@10 (binary relevance)."""
    if len(ranked) != len(relevant):
        raise ValueError(f"{len(ranked)} rankings for {len(relevant)} queries")
    out: dict[str, float] = {}
    for k in ks:
        out[f"Recall@{k}"] = metrics.mean([metrics.recall_at(r, set(rel), k) for r, rel in zip(ranked, relevant)])
    for k in ks:
        out[f"R_cap@{k}"] = metrics.mean([metrics.capped_recall_at(r, set(rel), k)
                                          for r, rel in zip(ranked, relevant)])
    for k in ks:
        out[f"Hit@{k}"] = metrics.mean([metrics.hit_at(r, set(rel), k) for r, rel in zip(ranked, relevant)])
    out["MRR"] = metrics.mean([metrics.mrr(r, set(rel)) for r, rel in zip(ranked, relevant)])
    out["nDCG@10"] = metrics.mean([metrics.ndcg_at(r, set(rel), 10) for r, rel in zip(ranked, relevant)])
    return out


def fuse_rankings(per_retriever: Sequence[Sequence[Sequence[str]]], depth: int,
                  rrf_k: int = RRF_K) -> list[list[str]]:
    """RRF of several retrievers' id rankings (same query order), with medret's engine fusion rule."""
    fused = []
    for lists in zip(*per_retriever):
        vocab: dict[str, int] = {}
        arrays = [np.array([vocab.setdefault(d, len(vocab)) for d in lst], dtype=np.int64) for lst in lists]
        names = list(vocab)
        _, rows = rrf(arrays, depth, rrf_k)
        fused.append([names[r] for r in rows.tolist()])
    return fused


def rank_ids(retriever: Any, queries: Sequence[str], depth: int, batch: int = 256) -> list[list[str]]:
    out: list[list[str]] = []
    for s in range(0, len(queries), batch):
        out.extend([h.id for h in row] for row in retriever.search(list(queries[s:s + batch]), depth))
    return out


def evaluate(data: LabelledSet, corpus_name: str, retrievers: Sequence[str], db_dir: str | None = None,
             ks: Sequence[int] = DEFAULT_KS, depth: int = 100, fusion: bool = True, rrf_k: int = RRF_K,
             **options: Any) -> dict[str, Any]:
    """Run each retriever over the labelled set's queries and score it; fuse them with RRF when there are 2+."""
    if not retrievers:
        raise ValueError("retrievers=[] is invalid: name at least one, e.g. ['BM25']")
    depth = max(depth, max(ks), 10)
    results: dict[str, Any] = {"dataset": data.name, "queries": len(data), "corpus": corpus_name,
                               "depth": depth, "ks": list(ks), "rows": []}
    rankings = []
    for name in retrievers:
        t0 = time.perf_counter()
        r = get_retriever(corpus_name, name, db_dir=db_dir, **options)
        t1 = time.perf_counter()
        ranked = rank_ids(r, data.queries, depth)
        t2 = time.perf_counter()
        rankings.append(ranked)
        row = {"retriever": name, **score_rankings(ranked, data.relevant, ks),
               "startup_s": round(t1 - t0, 3), "search_s": round(t2 - t1, 3)}
        log.info("eval %s on %s: %s", name, data.name, row)
        results["rows"].append(row)
    if fusion and len(retrievers) > 1:
        fused = fuse_rankings(rankings, depth, rrf_k)
        results["rows"].append({"retriever": "RRF(" + "+".join(retrievers) + f"), k={rrf_k}",
                                **score_rankings(fused, data.relevant, ks)})
    return results


def format_results(res: dict[str, Any]) -> str:
    keys = [k for k in res["rows"][0] if k not in ("retriever", "startup_s", "search_s")]
    width = max(12, *(len(r["retriever"]) for r in res["rows"]))
    head = f"{'retriever':{width}} " + " ".join(f"{k:>9}" for k in keys)
    lines = [f"{res['dataset']}: {res['queries']} queries, corpus {res['corpus']}, depth {res['depth']}", head,
             "-" * len(head)]
    for r in res["rows"]:
        lines.append(f"{r['retriever']:{width}} " + " ".join(f"{r[k]:9.4f}" for k in keys))
    return "\n".join(lines)
