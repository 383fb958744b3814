"""The searchers an engine holds, one per single retriever of its name: BM25 and dense, side by side.

Each answers ``search(queries, k) -> (scores, rows)`` over the whole corpus, best first, row -1 for "nothing
found". Where each index is, and whether it is current, is :mod:`medret.index.locate`'s decision.

A dense searcher encodes queries once and searches each source's index, merging exactly by score. Given a
:class:`Shards` plan it opens each exact index on the CPU (memory-mapped, checked like any other), then splits it
by rows over the plan's workers (:mod:`medret.index.sharded`): the encoder runs on the searcher's device, the rows
on the workers' devices (a Ray transport puts the workers in shard actors; a local host keeps them here).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from medret.config import EngineOptions
from medret.corpus.embeddings import fetch_hint
from medret.corpus.registry import Corpus
from medret.device import resolve_device
from medret.encoders.hf import Encoder
from medret.encoders.specs import spec_for
from medret.errors import IndexBuildError
from medret.index.bm25 import BM25Index, build_bm25
from medret.index.dense_build import build_dense_index, fp16_storage, load_dense_index
from medret.index.hints import build_command
from medret.index.identity import encoder_identity, legacy_dir
from medret.index.locate import (
    legacy_message,
    locate_bm25,
    locate_dense,
    medrag_applies,
    source_stores,
)
from medret.index.medrag import medrag_index_dir, open_medrag_index
from medret.index.select import merge_topk
from medret.index.sharded import ShardedDenseIndex, ShardHost, shard_index

log = logging.getLogger(__name__)


class Searcher(Protocol):
    kind: str

    def search(self, queries: list[str], k: int) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass(frozen=True)
class Shards:
    """Split each exact dense index by rows over ``count`` workers of ``host``."""

    count: int
    host: ShardHost


def refuse_non_finite(scores: np.ndarray, rows: np.ndarray, what: str) -> None:
    """Defence in depth behind the open-time scan (:mod:`medret.index.emb_check`): a found row (``>= 0``) whose
    score is NaN or ±inf never reaches an answer; the search fails naming the row instead."""
    bad = (rows >= 0) & ~np.isfinite(scores)
    if bad.any():
        qi, j = (int(x[0]) for x in np.nonzero(bad))
        raise IndexBuildError(f"{what} scored row {int(rows[qi, j])} {float(scores[qi, j])} for query {qi}: its stored "
                              "vectors are damaged (NaN, inf or huge values written after they were checked). Run "
                              "`medret doctor --deep` to find the file, then rebuild the index (or download the "
                              "embeddings again)")


class BM25Searcher:
    kind = "bm25"

    def __init__(self, corpus: Corpus, store: Any, auto_build: bool, progress: bool):
        where = locate_bm25(corpus, store, auto_build)
        if where.kind == "build":
            build_bm25(store, where.folder, progress=progress, only_if_missing=True)  # waits for a concurrent build
            where = locate_bm25(corpus, store, auto_build)
        name = corpus.display_name
        if where.kind == "missing":
            raise IndexBuildError(f"no BM25 index for {name} at {where.folder}; build it with "
                                  f"`medret index build --corpus {name} --retriever BM25`")
        if where.kind == "stale":
            raise IndexBuildError(
                f"the BM25 index at {where.folder} was built from other chunk files than the corpus now holds "
                f"({name} changed since); rebuild it with `medret index build --corpus {name} --retriever BM25 "
                "--rebuild`")
        self.index = BM25Index(where.folder)  # a damaged index is refused here, naming the file

    def search(self, queries: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.index.search(queries, k)


class DenseSearcher:
    kind = "dense"

    def __init__(self, corpus: Corpus, store: Any, part: str, config: EngineOptions, progress: bool = False,
                 shards: Shards | None = None):
        self.part = part
        self.spec = spec_for(part, config)
        self.device = resolve_device(config.device, config.gpu_id, config.allow_cpu_fallback)
        self.batch_size = config.batch_size
        self.encoder = Encoder(self.spec, self.device, fp16=config.fp16, query_model_path=config.query_model,
                               doc_model_path=config.doc_model, models_dir=config.models_dir)
        self.identity = encoder_identity(self.spec, config.doc_model, config.query_model, config.models_dir)
        self.shards = shards
        self.indexes: list[tuple[int, Any]] = []
        for (offset, sub), source in zip(source_stores(store), corpus.sources):
            ix = self._open(source, sub, config, progress, corpus.display_name)
            if shards is not None:
                # the workers take their rows of the index just opened (and checked) on the CPU
                ix = shard_index(ix, shards.count, shards.host, device=self.device,
                                 allow_cpu_fallback=config.allow_cpu_fallback)
            self.indexes.append((offset, ix))
        self.kind = f"dense:{self.spec.name}:" + ",".join(sorted({ix.index_type for _, ix in self.indexes}))

    def sharded(self) -> list[ShardedDenseIndex]:
        return [ix for _, ix in self.indexes if isinstance(ix, ShardedDenseIndex)]

    def _open(self, source: Any, sub: Any, config: EngineOptions, progress: bool, corpus_name: str) -> Any:
        # "rerank" is the refine factor's key in DenseIndex's search parameters (and in the dense.json files written)
        params: dict[str, Any] = {"nprobe": config.nprobe, "ef_search": config.ef_search,
                                  "rerank": config.refine_factor}
        device = "cpu" if self.shards is not None else self.device  # shard workers put the rows on their devices
        kind, where, _ = locate_dense(source, len(sub), self.spec, self.identity, config)
        if kind in ("own", "copy"):
            if kind == "copy":
                log.info("using %s: built from the same model files (%s)", where, self.identity.describe())
            return load_dense_index(where, sub, self.spec, device=device, corpus_name=corpus_name,
                                    identity=self.identity, config=config, **params)
        if kind == "medrag":
            log.info("using MedRAG's precomputed index %s", where)
            ix = open_medrag_index(where, sub, metric=self.spec.metric, cache_dir=Path(source.artifact_dir) / "index")
            ix.set_search_params(**params)
            return ix.to(device, half=fp16_storage(config, device)) if device != "cpu" else ix
        if kind == "build_legacy":
            log.warning("ignoring the dense index at %s: medret's first layout did not record which model weights "
                        "built it; building %s for %s (delete the old folder to free its space)",
                        legacy_dir(source, self.spec), where, self.identity.describe())
        if kind == "legacy":
            raise IndexBuildError(legacy_message(where, self.identity, corpus_name, config))
        if kind == "missing":
            medrag = medrag_index_dir(source.root, self.spec) if medrag_applies(self.spec) else None
            fetch = fetch_hint(source.name, self.spec.doc_model, config.db_dir) if medrag else None
            raise IndexBuildError(
                f"no {self.spec.name} index for {source.name!r} (looked for {where}"
                + (f" and MedRAG's {medrag}" if medrag else "") + f"); build it with `{build_command(config)}`"
                + ("" if config.device else " (on a GPU node add --device cuda:0)")
                + (f", or fetch MedRAG's precomputed embeddings: `{fetch}`" if fetch else
                           f", or unpack MedRAG's precomputed embeddings into {medrag}" if medrag else ""))
        build_dense_index(sub, where, config, part=self.part, progress=progress, encoder=self.encoder,
                          identity=self.identity)
        return load_dense_index(where, sub, self.spec, device=device, corpus_name=corpus_name,
                                identity=self.identity, config=config, **params)

    def search(self, queries: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        q = self.encoder.encode_queries(queries, batch_size=self.batch_size)
        if not np.isfinite(q).all():
            i = int(np.nonzero(~np.isfinite(q).all(axis=1))[0][0])
            raise IndexBuildError(f"the query encoder of {self.spec.name} returned NaN/inf for query {i} "
                                  f"({queries[i][:80]!r}): check the model files, or encode in float32 (fp16=False)")
        parts_s: list[np.ndarray] = []
        parts_r: list[np.ndarray] = []
        for offset, ix in self.indexes:
            s, r = ix.search(q, k)
            r = np.asarray(r, dtype=np.int64)
            which = f" of source {len(parts_s)}" if len(self.indexes) > 1 else ""
            refuse_non_finite(np.asarray(s), r, f"the {self.spec.name} index{which}")
            # approximate indexes may find fewer than k: those slots are row -1, score -inf; keep them so
            parts_s.append(np.where(r < 0, np.float32(-np.inf), np.asarray(s, dtype=np.float32)))
            parts_r.append(np.where(r < 0, -1, r + offset))
        if len(parts_s) == 1:
            return parts_s[0], parts_r[0]
        return merge_topk(np.concatenate(parts_s, 1), np.concatenate(parts_r, 1), k)

    def close(self) -> None:
        for ix in self.sharded():
            ix.close()
