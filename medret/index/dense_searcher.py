"""Dense retrieval over a corpus: encode queries once, search each source's index, merge exactly by score.

Per source, the index is (in this order) medret's own (`<source>/medret/index/<encoder>/`), MedRAG's
precomputed one (`<source>/index/<doc model>/`), or — for small corpora, when auto_build is on — built now.
"""
from __future__ import annotations

import logging

import numpy as np

from medret.config import RetrieverConfig
from medret.corpus.registry import Corpus
from medret.errors import IndexBuildError
from medret.index.select import merge_topk

log = logging.getLogger(__name__)
AUTO_BUILD_MAX_ROWS = 100_000  # larger corpora need an explicit `medret index build` (GPU hours for MedCorp)


def fp16_storage(config: RetrieverConfig, device: str) -> bool:
    """Embeddings are stored in fp16 on GPU machines (half the memory), fp32 on CPU unless asked."""
    return device.startswith("cuda") if config.fp16 is None else config.fp16


def source_stores(store) -> list[tuple[int, object]]:
    """(row offset, store) of each source of a DocStore or UnionStore."""
    if hasattr(store, "stores"):
        return [(store.offset_of(i), s) for i, s in enumerate(store.stores)]
    return [(0, store)]


class DenseSearcher:
    kind = "dense"

    def __init__(self, corpus: Corpus, store, part: str, config: RetrieverConfig, progress: bool = False):
        from medret.device import resolve_device
        from medret.encoders.hf import Encoder
        from medret.encoders.specs import resolve_spec

        self.spec = resolve_spec(part, pooling=config.pooling)
        self.device = resolve_device(config.device, config.gpu_id, config.allow_cpu_fallback)
        self.batch_size = config.batch_size
        self.encoder = Encoder(self.spec, self.device, fp16=config.fp16, query_model_path=config.query_model,
                               doc_model_path=config.doc_model, models_dir=config.models_dir)
        self.indexes = []
        for (offset, sub), source in zip(source_stores(store), corpus.sources):
            self.indexes.append((offset, self._open(source, sub, config, progress, corpus.display_name)))
        self.kind = f"dense:{self.spec.name}:" + ",".join(sorted({ix.index_type for _, ix in self.indexes}))

    def _open(self, source, sub, config: RetrieverConfig, progress: bool, corpus_name: str):
        from medret.index.build import build_dense_index, load_dense_index, read_manifest
        from medret.index.medrag import has_medrag_embeddings, has_medrag_faiss, medrag_index_dir, open_medrag_index

        own = source.index_dir(self.spec.slug)
        params = {"nprobe": config.nprobe, "ef_search": config.ef_search, "rerank": config.rerank}
        if read_manifest(own) is not None:
            return load_dense_index(own, sub, self.spec, device=self.device, corpus_name=corpus_name, **params)
        medrag = medrag_index_dir(source.root, self.spec)
        if has_medrag_embeddings(medrag) or has_medrag_faiss(medrag):
            log.info("using MedRAG's precomputed index %s", medrag)
            ix = open_medrag_index(medrag, sub, metric=self.spec.metric, cache_dir=own.parent)
            ix.set_search_params(**params)
            return ix.to(self.device, half=fp16_storage(config, self.device)) if self.device != "cpu" else ix
        if not config.auto_build or len(sub) > AUTO_BUILD_MAX_ROWS:
            from medret.corpus.embeddings import fetch_hint

            fetch = fetch_hint(source.name, self.spec.doc_model, config.db_dir)
            raise IndexBuildError(
                f"no {self.spec.name} index for {source.name!r} (looked in {own} and MedRAG's {medrag}); build it "
                f"with `medret index build --corpus {corpus_name} --retriever {config.retriever_name} "
                f"--db-dir DIR --device cuda:0`"
                + (f", or fetch MedRAG's precomputed embeddings: `{fetch}`" if fetch else ""))
        build_dense_index(sub, self.spec, own, device=self.device, batch_size=self.batch_size,
                          fp16_storage=fp16_storage(config, self.device), progress=progress,
                          encoder=self.encoder, corpus_name=corpus_name)
        return load_dense_index(own, sub, self.spec, device=self.device, corpus_name=corpus_name, **params)

    def search(self, queries: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        q = self.encoder.encode_queries(queries, batch_size=self.batch_size)
        parts_s, parts_r = [], []
        for offset, ix in self.indexes:
            s, r = ix.search(q, k)
            r = np.asarray(r, dtype=np.int64)
            # approximate indexes may find fewer than k: those slots are row -1, score -inf; keep them so
            parts_s.append(np.where(r < 0, np.float32(-np.inf), np.asarray(s, dtype=np.float32)))
            parts_r.append(np.where(r < 0, -1, r + offset))
        if len(parts_s) == 1:
            return parts_s[0], parts_r[0]
        return merge_topk(np.concatenate(parts_s, 1), np.concatenate(parts_r, 1), k)
