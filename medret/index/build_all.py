"""`medret index build`: everything a retriever needs (document stores, BM25, one dense index per source).

Building one dense index is :func:`medret.index.dense_build.build_dense_index`; where each index goes is
:mod:`medret.index.locate`'s decision, as for the searchers that open them.
"""
from __future__ import annotations

from typing import Iterator

from medret import optional
from medret.config import EngineOptions
from medret.corpus.registry import resolve_corpus
from medret.corpus.store import build_store, open_corpus_store
from medret.device import resolve_device
from medret.encoders.locate import model_dim, model_location
from medret.encoders.specs import spec_for
from medret.errors import ConfigError
from medret.index.bm25 import build_bm25
from medret.index.dense_build import build_dense_index
from medret.index.faiss_ops import check_index_type
from medret.index.identity import adopt_legacy as adopt
from medret.index.identity import encoder_identity, keyed_dir, legacy_dir
from medret.index.locate import bm25_dir, locate_dense, source_stores
from medret.index.manifest import MANIFEST, read_manifest
from medret.retrievers import retriever_parts


def build_all(config: EngineOptions, index_type: str | None = None, rebuild: bool = False,
              progress: bool = True, adopt_legacy: bool = False) -> Iterator[str]:
    """Build what ``config`` needs; yields one line per step for the CLI. ``index_type``: of the dense indexes
    (default flat; refused for a retriever without one, and checked before anything is built). ``adopt_legacy``: move
    dense indexes of medret's first layout into the new one, recording the configured encoder, instead of encoding
    again."""
    parts = retriever_parts(config.retriever_name)
    dense = [part for part in parts if part != "bm25"]
    if index_type is not None and not dense:
        raise ConfigError(f"index_type (--index-type)={index_type!r} does not apply to retriever "
                          f"{config.retriever_name!r}: BM25 has no dense index to build (its index is bm25s's own, "
                          "with no variants); drop --index-type, or name a dense retriever (MedCPT, e5, RRF-2, a "
                          "model folder, ...). Nothing was built")
    index_type = "flat" if index_type is None else index_type
    if dense:  # the dense extra, before the store is built: MissingDependencyError naming pip install 'medret[dense]'
        optional.torch()
        optional.transformers()
    for part in dense:  # before the document store or any index is built: a bad value changes nothing
        spec = spec_for(part, config)
        check_index_type(index_type, spec.metric,
                         model_dim(model_location(spec.doc_model, config.doc_model, config.models_dir)))
    corpus = resolve_corpus(config.corpus_name, config.db_dir, config.cache_dir)
    if rebuild:
        for s in corpus.sources:
            build_store(s, progress=progress)
    store = open_corpus_store(corpus, build=True, progress=progress)
    yield f"document store: {corpus.display_name}, {len(store)} snippets"
    for part in parts:
        if part == "bm25":
            folder = bm25_dir(corpus)
            build_bm25(store, folder, progress=progress, only_if_missing=not rebuild)
            yield f"BM25 index: {folder}"
            continue
        spec = spec_for(part, config)
        identity = encoder_identity(spec, config.doc_model, config.query_model, config.models_dir)
        resolve_device(config.device, config.gpu_id, config.allow_cpu_fallback)  # a bad device: before any build
        for (_, sub), source in zip(source_stores(store), corpus.sources):
            out = keyed_dir(source, identity)  # medret builds its own index for this encoder (locate: "own")
            if adopt_legacy and read_manifest(out) is None:
                old = legacy_dir(source, spec)
                if (old / MANIFEST).exists():  # a damaged manifest is refused there, naming the field
                    adopt(old, out, identity, sub)
                    yield f"{spec.name} index for {source.name}: adopted {old} as {out} ({identity.describe()})"
            if index_type == "flat" and not rebuild:
                # MedRAG's precomputed embeddings are the exact (flat) index the searchers open for this encoder
                # (locate: "medrag"): encoding the source again would only make a copy of them
                where = locate_dense(source, len(sub), spec, identity, config)
                if where.kind == "medrag":
                    yield (f"{spec.name} index for {source.name}: MedRAG's precomputed embeddings in {where.folder} "
                           f"(nothing to build; --rebuild builds medret's own)")
                    continue
            build_dense_index(sub, out, config, part=part, index_type=index_type, rebuild=rebuild, progress=progress,
                              identity=identity)
            yield f"{spec.name} index ({index_type}) for {source.name}: {out}"
