"""The engine: one corpus, its document store and the searchers a retriever name asks for.

queries → (each searcher) encode → index search → (fusion) RRF → rows → [rerank: a cross-encoder over each query's
own candidates] → store lookup → documents
"""
from __future__ import annotations

import logging
import os
import time
from typing import Any

import numpy as np

from medret.config import EngineOptions
from medret.corpus.registry import Corpus, resolve_corpus
from medret.corpus.store import DocStore, UnionStore, open_corpus_store
from medret.device import resolve_device
from medret.encoders.cross import CrossEncoder
from medret.encoders.specs import reranker_for
from medret.errors import ConfigError
from medret.index.fusion import rrf
from medret.index.searchers import BM25Searcher, DenseSearcher, Searcher, Shards
from medret.index.sharded import ShardedDenseIndex
from medret.rerank import rerank
from medret.retrievers import retriever_parts
from medret.validate import check_topk, dedupe
from medret.version import __version__

log = logging.getLogger(__name__)


def contents(title: str, text: str) -> str:
    """Search-R1's document text: the quoted title on the first line (newlines in it folded), the text after."""
    if "\n" in title:
        title = " ".join(title.split())
    return f'"{title}"\n{text}'


class Engine:
    """Holds the store and searchers of one configuration; ``search_rows`` and ``documents`` are the whole path.

    ``shards``: split each exact dense index by rows over these workers (the query encoder stays here, on this
    engine's device); only dense retrievers can be sharded."""

    def __init__(self, config: EngineOptions, progress: bool = False, shards: Shards | None = None):
        t0 = time.perf_counter()
        self.config = config
        self.parts = retriever_parts(config.retriever_name)
        if shards is not None and all(p == "bm25" for p in self.parts):
            raise ConfigError(f"ray_shards={shards.count} is invalid for retriever_name={config.retriever_name!r}: "
                              "only dense indexes are sharded; use ray_shards=1")
        self.corpus: Corpus = resolve_corpus(config.corpus_name, config.db_dir, config.cache_dir)
        self.store = open_corpus_store(self.corpus, build=config.auto_build, progress=progress)
        self.device = "cpu"
        self.searchers: list[Searcher] = []
        self.reranker: CrossEncoder | None = None
        try:
            for p in self.parts:
                self.searchers.append(self._searcher(p, progress, shards))
            spec = reranker_for(config)
            if spec is not None:
                if not any(isinstance(s, DenseSearcher) for s in self.searchers):
                    self.device = resolve_device(config.device, config.gpu_id, config.allow_cpu_fallback)
                self.reranker = CrossEncoder(spec, self.device, fp16=config.fp16, models_dir=config.models_dir,
                                             batch_size=config.batch_size)
        except BaseException:
            self.close()
            raise
        self.doc_bytes = _mean_doc_bytes(self.store)
        self.startup_s = time.perf_counter() - t0
        log.info("medret engine ready: corpus %s (%d snippets), retriever %s, device %s, in %.2fs",
                 self.corpus.display_name, len(self.store), config.retriever_name, self.device, self.startup_s)

    def _searcher(self, part: str, progress: bool, shards: Shards | None) -> Searcher:
        if part == "bm25":
            return BM25Searcher(self.corpus, self.store, self.config.auto_build, progress)
        s = DenseSearcher(self.corpus, self.store, part, self.config, progress, shards)
        self.device = s.device
        return s

    def sharded(self) -> list[ShardedDenseIndex]:
        """The sharded indexes of this engine's dense searchers."""
        return [ix for s in self.searchers if isinstance(s, DenseSearcher) for ix in s.sharded()]

    def search_rows(self, queries: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows) of shape (len(queries), min(k, n)), best first; row -1 marks "nothing found"
        (an approximate index can find fewer than k)."""
        if len(self.searchers) == 1:
            return self.searchers[0].search(queries, k)
        depth = max(k, self.config.fusion_depth or k)
        rankings = [s.search(queries, depth)[1] for s in self.searchers]
        kk = min(k, len(self.store))
        scores = np.zeros((len(queries), kk), dtype=np.float64)
        rows = np.zeros((len(queries), kk), dtype=np.int64)
        for i in range(len(queries)):
            s, r = rrf([ranking[i][ranking[i] >= 0] for ranking in rankings], kk, self.config.rrf_k)
            scores[i, : len(r)], rows[i, : len(r)] = s, r
            rows[i, len(r):] = -1
        return scores, rows

    def documents(self, rows: np.ndarray) -> list[dict]:
        """Search-R1 documents of the rows >= 0, in order: {"id", "title", "contents"}, where
        contents = '"title"\\ntext' (Search-R1's convention: its formatter takes the first line as the title)."""
        flat = rows.ravel()
        return [_document(d) for d in self.store.get(flat[flat >= 0])]

    def scored(self, queries: list[str], k: int) -> list[list[dict]]:
        """Search-R1's scored items of each query, best first: ``[{"document": {...}, "score": s}, ...]``; with a
        reranker, the k best of each query's ``rerank_depth`` first-stage candidates, scored by the cross-encoder."""
        if self.reranker is not None:
            return self._reranked(queries, k)
        scores, rows = self.search_rows(queries, k)
        docs = iter(self.documents(rows))
        return [[{"document": next(docs), "score": s} for s, r in zip(srow, rrow) if r >= 0]
                for srow, rrow in zip(scores.tolist(), rows.tolist())]

    def _reranked(self, queries: list[str], k: int) -> list[list[dict]]:
        assert self.reranker is not None
        depth = self.config.rerank_depth
        check_topk(k, k, depth)
        unique, where = dedupe(queries)  # a query asked twice in one batch is scored once
        _, rows = self.search_rows(unique, depth)
        records = self.store.get(rows[rows >= 0])
        candidates, at = [], 0
        for row in rows:
            n = int((row >= 0).sum())
            candidates.append(records[at: at + n])
            at += n
        best = rerank(self.reranker.spec, self.reranker.score, unique, candidates, k)
        out = [[{"document": _document(cands[j]), "score": s} for j, s in picks]
               for cands, picks in zip(candidates, best)]
        return [out[i] for i in where]

    def info(self) -> dict[str, Any]:
        return {"service": "medret", "version": __version__, "corpus": self.corpus.display_name,
                "retriever": self.config.retriever_name, "n_docs": len(self.store),
                "index": [s.kind for s in self.searchers], "device": self.device,
                "doc_bytes": self.doc_bytes, "startup_s": round(self.startup_s, 3),
                **({"reranker": self.reranker.spec.name, "rerank_depth": self.config.rerank_depth}
                   if self.reranker is not None else {})}

    def close(self) -> None:
        for s in self.searchers:
            if isinstance(s, DenseSearcher):
                s.close()
        self.store.close()


def _document(d: dict) -> dict:
    """A store record as Search-R1's document: {"id", "title", "contents"}."""
    return {"id": d["id"], "title": d["title"], "contents": contents(d["title"], d["content"])}


def _mean_doc_bytes(store: DocStore | UnionStore) -> int | None:
    """Mean stored size of a document (its JSON in ``docs.bin``): what answer-size estimates are made of."""
    try:
        parts = store.stores if isinstance(store, UnionStore) else [store]
        total = sum(os.path.getsize(os.path.join(p.folder, "docs.bin")) for p in parts)
        return max(1, round(total / max(1, len(store))))
    except (OSError, AttributeError, TypeError):
        return None
