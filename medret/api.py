"""The public surface: ``get_retriever(...)`` and ``Retriever.retrieve / search``.

``retrieve`` returns exactly what Search-R1's ``/retrieve`` returns; ``search`` returns typed hits. The way a
search travels (in-process, HTTP, Ray) is the configured transport; results are identical across them.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from medret.config import DEFAULT_TOPK, RetrieverConfig
from medret.transports import Transport, make_transport
from medret.validate import (
    check_answer_size,
    check_flag,
    check_queries,
    check_topk,
    dedupe,
)

__all__ = ["Hit", "Retriever", "clear_cache", "get_retriever", "retriever_for"]


@dataclass(frozen=True)
class Hit:
    """One retrieved snippet: its Search-R1 document dict and its score (higher is better)."""

    document: dict
    score: float

    @property
    def id(self) -> str:
        return self.document["id"]

    @property
    def title(self) -> str:
        return self.document["title"]

    @property
    def content(self) -> str:
        """The snippet's text: ``contents`` after its title line."""
        return self.document["contents"].partition("\n")[2]

    @property
    def contents(self) -> str:
        return self.document["contents"]


class Retriever:
    """A configured retriever. Thread-safe; build it with :func:`get_retriever` to share it per process."""

    def __init__(self, config: RetrieverConfig, transport: Transport | None = None):
        """``transport``: any :class:`medret.transports.Transport` object (e.g. ``HttpTransport(HttpOptions(
        url=...))``); by default the one ``config.backend`` names, with its options from ``config``."""
        self.config = config
        self.transport: Transport = transport if transport is not None else make_transport(config)

    def search(self, queries: list[str], k: int = DEFAULT_TOPK) -> list[list[Hit]]:
        """The k best hits of each query, in query order. Identical queries are searched once."""
        queries = check_queries(queries, self.config.max_batch, self.config.max_query_chars)
        k = check_topk(k, self.config.max_topk, self._depth)
        if not queries:
            return []
        self._check_answer(len(queries), k)
        unique, where = dedupe(queries)
        rows = self.transport.search(unique, k)
        hits = [[Hit(item["document"], float(item["score"])) for item in row] for row in rows]
        return [hits[i] for i in where]

    def retrieve(self, queries: list[str], topk: int = DEFAULT_TOPK, return_scores: bool = True) -> dict:
        """Search-R1's JSON: {"result": [[{"document": {...}, "score": s}, ...], ...]}; documents alone without scores.

        Every transport answers in this very format (a server's JSON is handed through, not rebuilt).
        """
        return_scores = check_flag("return_scores", return_scores)
        queries = check_queries(queries, self.config.max_batch, self.config.max_query_chars)
        topk = check_topk(topk, self.config.max_topk, self._depth)
        if not queries:
            return {"result": []}
        self._check_answer(len(queries), topk)
        unique, where = dedupe(queries)
        result = self.transport.retrieve(unique, topk, return_scores)["result"]
        return {"result": result if len(unique) == len(queries) else [result[i] for i in where]}

    @property
    def _depth(self) -> int | None:
        """The rerank stage's candidates per query (topk's upper bound), None without one."""
        return self.config.rerank_depth if self.config.reranker is not None else None

    def _check_answer(self, n_queries: int, k: int) -> None:
        """The answer-size limits (max_answer_docs, max_answer_bytes); the bytes estimate needs a transport that
        knows the corpus (in-process); a server checks its own limits."""
        n_docs, doc_bytes = self.transport.answer_stats
        check_answer_size(n_queries, k, self.config.max_answer_docs, self.config.max_answer_bytes, doc_bytes,
                          n_docs)

    def info(self) -> dict[str, Any]:
        return self.transport.info()

    def close(self) -> None:
        self.transport.close()


_CACHE: dict[RetrieverConfig, Retriever] = {}
_CACHE_LOCK = threading.Lock()


def get_retriever(corpus_name: str = "sample", retriever_name: str = "BM25", db_dir: str | None = None,
                  gpu_id: int | None = None, device: str | None = None, **options: Any) -> Retriever:
    """The process-wide retriever for this configuration, built on first call (a second call is free).

    ``options`` are the other fields of :class:`medret.config.RetrieverConfig` (backend, url, rrf_k, ...).
    """
    config = RetrieverConfig.from_mapping(dict(corpus_name=corpus_name, retriever_name=retriever_name,
                                               db_dir=db_dir, gpu_id=gpu_id, device=device, **options))
    return retriever_for(config)


def retriever_for(config: RetrieverConfig) -> Retriever:
    with _CACHE_LOCK:
        r = _CACHE.get(config)
        if r is None:
            r = _CACHE[config] = Retriever(config)
        return r


def clear_cache() -> None:
    """Close and forget every cached retriever (tests, notebooks)."""
    with _CACHE_LOCK:
        for r in _CACHE.values():
            r.close()
        _CACHE.clear()
