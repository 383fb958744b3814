"""The engine: one corpus, its document store and the searchers a retriever name asks for.

queries → (each searcher) encode → index search → (fusion) RRF → rows → store lookup → documents
"""
from __future__ import annotations

import logging
import os
import time
from typing import Any

import numpy as np

from medret.config import RetrieverConfig
from medret.corpus.registry import Corpus, resolve_corpus
from medret.corpus.store import open_corpus_store
from medret.errors import ConfigError, IndexBuildError
from medret.index.bm25 import BM25Index, build_bm25
from medret.index.fusion import rrf

log = logging.getLogger(__name__)

FUSIONS = {"rrf-2": ("bm25", "medcpt"), "rrf-4": ("bm25", "contriever", "specter", "medcpt")}
DENSE = ("medcpt", "contriever", "specter", "e5")


def retriever_parts(name: str) -> tuple[str, ...]:
    """Split a retriever name into its single retrievers: 'RRF-2' → (bm25, medcpt); 'BM25+e5' → (bm25, e5)."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"retriever_name={name!r} is invalid: {valid_retrievers()}")
    key = name.strip().lower()
    if key in FUSIONS:
        return FUSIONS[key]
    parts = tuple(p.strip() for p in name.split("+")) if "+" in name else (name.strip(),)
    out = []
    for p in parts:
        if p.lower() == "bm25" or p.lower() in DENSE:
            out.append(p.lower())
        elif _is_model_dir(p):
            out.append(p)
        else:
            raise ConfigError(f"retriever_name={name!r} is unknown: {valid_retrievers()}")
    return tuple(out)


def valid_retrievers() -> str:
    return ("valid names are BM25, MedCPT, Contriever, SPECTER, e5, RRF-2 (BM25+MedCPT), "
            "RRF-4 (BM25+Contriever+SPECTER+MedCPT), any of them joined with '+', or a local model folder "
            "(with pooling='cls'|'mean')")


def _is_model_dir(p: str) -> bool:
    from pathlib import Path

    return (Path(p).expanduser() / "config.json").is_file()


def contents(title: str, text: str) -> str:
    """Search-R1's document text: the quoted title on the first line (newlines in it folded), the text after."""
    if "\n" in title:
        title = " ".join(title.split())
    return f'"{title}"\n{text}'


class Engine:
    """Holds the store and searchers of one configuration; ``search_rows`` and ``documents`` are the whole path."""

    def __init__(self, config: RetrieverConfig, progress: bool = False):
        t0 = time.perf_counter()
        self.config = config
        self.parts = retriever_parts(config.retriever_name)
        self.corpus: Corpus = resolve_corpus(config.corpus_name, config.db_dir, config.cache_dir)
        self.store = open_corpus_store(self.corpus, build=config.auto_build, progress=progress)
        self.device = "cpu"
        self.searchers = [self._searcher(p, progress) for p in self.parts]
        self.doc_bytes = _mean_doc_bytes(self.store)
        self.startup_s = time.perf_counter() - t0
        log.info("medret engine ready: corpus %s (%d snippets), retriever %s, device %s, in %.2fs",
                 self.corpus.display_name, len(self.store), config.retriever_name, self.device, self.startup_s)

    def _searcher(self, part: str, progress: bool):
        if part == "bm25":
            return BM25Searcher(self.corpus, self.store, self.config.auto_build, progress)
        from medret.index.dense_searcher import DenseSearcher

        s = DenseSearcher(self.corpus, self.store, part, self.config, progress)
        self.device = s.device
        return s

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
        return [{"id": d["id"], "title": d["title"], "contents": contents(d["title"], d["content"])}
                for d in self.store.get(flat[flat >= 0])]

    def scored(self, queries: list[str], k: int) -> list[list[dict]]:
        """Search-R1's scored items of each query, best first: ``[{"document": {...}, "score": s}, ...]``."""
        scores, rows = self.search_rows(queries, k)
        docs = iter(self.documents(rows))
        return [[{"document": next(docs), "score": s} for s, r in zip(srow, rrow) if r >= 0]
                for srow, rrow in zip(scores.tolist(), rows.tolist())]

    def info(self) -> dict[str, Any]:
        from medret import __version__

        return {"service": "medret", "version": __version__, "corpus": self.corpus.display_name,
                "retriever": self.config.retriever_name, "n_docs": len(self.store),
                "index": [s.kind for s in self.searchers], "device": self.device,
                "doc_bytes": self.doc_bytes, "startup_s": round(self.startup_s, 3)}

    def close(self) -> None:
        self.store.close()


def _mean_doc_bytes(store) -> int | None:
    """Mean stored size of a document (its JSON in ``docs.bin``): what answer-size estimates are made of."""
    try:
        parts = getattr(store, "stores", None) or [store]
        total = sum(os.path.getsize(os.path.join(p.folder, "docs.bin")) for p in parts)
        return max(1, round(total / max(1, len(store))))
    except (OSError, AttributeError, TypeError):
        return None


class BM25Searcher:
    kind = "bm25"

    def __init__(self, corpus: Corpus, store, auto_build: bool, progress: bool):
        folder = corpus.artifact_dir / "bm25"
        if not (folder / "manifest.json").exists():
            if not auto_build:
                raise IndexBuildError(f"no BM25 index for {corpus.display_name} at {folder}; build it with "
                                      f"`medret index build --corpus {corpus.display_name} --retriever BM25`")
            build_bm25(store, folder, progress=progress, only_if_missing=True)  # waits for a concurrent build
        self.index = BM25Index(folder)
        if self.index.checksum != store.checksum or int(self.index.manifest["rows"]) != len(store):
            raise IndexBuildError(
                f"the BM25 index at {folder} was built from other chunk files than the corpus now holds "
                f"({corpus.display_name} changed since); rebuild it with `medret index build --corpus "
                f"{corpus.display_name} --retriever BM25 --rebuild`")

    def search(self, queries: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.index.search(queries, k)
