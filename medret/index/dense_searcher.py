"""Dense retrieval over a corpus: encode queries once, search each source's index, merge exactly by score.

Per source, the index is (in this order, :func:`locate`) medret's own for this encoder
(`<source>/medret/index/<model>-<key>/`, :mod:`medret.index.identity`), one medret built from the same model files
elsewhere (a copy), MedRAG's precomputed one (`<source>/index/<doc model>/`, for MedCPT / Contriever / SPECTER
with MedRAG's recipe), or — for small corpora, when auto_build is on — built now.
"""
from __future__ import annotations

import logging

import numpy as np

from pathlib import Path
from typing import Any

from medret.config import RetrieverConfig
from medret.corpus.registry import Corpus
from medret.encoders.specs import REGISTRY, EncoderSpec
from medret.errors import IndexBuildError
from medret.index.select import merge_topk

log = logging.getLogger(__name__)
AUTO_BUILD_MAX_ROWS = 100_000  # larger corpora need an explicit `medret index build` (GPU hours for MedCorp)


def fp16_storage(config: RetrieverConfig, device: str) -> bool:
    """Embeddings are stored in fp16 on GPU machines (half the memory), fp32 on CPU unless asked."""
    return device.startswith("cuda") if config.fp16 is None else config.fp16


def medrag_applies(spec: EncoderSpec) -> bool:
    """MedRAG's precomputed index fits ``spec`` when its document model is one MedRAG embedded (by hub id; the
    weights may come from the cache, $MEDRET_MODELS_DIR or a ``--doc-model`` copy) and it encodes documents with
    MedRAG's recipe for it. A local folder configured ``--like MedCPT`` is another model: it gets its own index."""
    registered = next((s for s in REGISTRY.values() if s.doc_model == spec.doc_model and s.name != "e5"), None)
    return registered is not None and spec.same_encoding(registered)


def locate(source: Any, size: int, spec: EncoderSpec, identity: Any, config: RetrieverConfig) -> tuple[str, Path]:
    """Which index of ``source`` (``size`` rows) serves ``identity``, as ``(kind, folder)``; kinds, in order:
    ``own`` (built for this encoder), ``copy`` (built from the same model files at another path), ``medrag``
    (MedRAG's precomputed), ``build`` (to be built now), ``build_legacy`` (to be built now, leaving aside an index
    of medret's first layout), ``missing`` (none: build it), ``legacy`` (only an index of medret's first layout:
    migrate or rebuild)."""
    from medret.index.build import read_manifest
    from medret.index.identity import find_copy, keyed_dir, legacy_dir, recorded
    from medret.index.medrag import has_medrag_embeddings, has_medrag_faiss, medrag_index_dir

    own = keyed_dir(source, identity)
    if read_manifest(own) is not None:
        return "own", own
    copy = find_copy(source, identity)
    if copy is not None:
        return "copy", copy
    if medrag_applies(spec):
        medrag = medrag_index_dir(source.root, spec)
        if has_medrag_embeddings(medrag) or has_medrag_faiss(medrag):
            return "medrag", medrag
    old = legacy_dir(source, spec)
    old_manifest = read_manifest(old)
    if old_manifest is not None and recorded(old_manifest) is None:
        if config.auto_build and size <= AUTO_BUILD_MAX_ROWS:
            return "build_legacy", own
        return "legacy", old
    if config.auto_build and size <= AUTO_BUILD_MAX_ROWS:
        return "build", own
    return "missing", own


def legacy_message(old: Path, spec: EncoderSpec, identity: Any, corpus_name: str, config: RetrieverConfig) -> str:
    build = f"`medret index build --corpus {corpus_name} --retriever {config.retriever_name} (and your model flags)"
    return (f"the dense index at {old} is in medret's first layout, which did not record which model weights built "
            f"it, so medret will not guess: if it was built with {identity.describe()}, move it to the new layout "
            f"with {build} --adopt-legacy` (no re-encoding), else rebuild it with {build} --rebuild`")


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
        from medret.encoders.specs import spec_for
        from medret.index.identity import encoder_identity

        self.spec = spec_for(part, config)
        self.device = resolve_device(config.device, config.gpu_id, config.allow_cpu_fallback)
        self.batch_size = config.batch_size
        self.encoder = Encoder(self.spec, self.device, fp16=config.fp16, query_model_path=config.query_model,
                               doc_model_path=config.doc_model, models_dir=config.models_dir)
        self.identity = encoder_identity(self.spec, config.doc_model, config.query_model, config.models_dir)
        self.indexes = []
        for (offset, sub), source in zip(source_stores(store), corpus.sources):
            self.indexes.append((offset, self._open(source, sub, config, progress, corpus.display_name)))
        self.kind = f"dense:{self.spec.name}:" + ",".join(sorted({ix.index_type for _, ix in self.indexes}))

    def _open(self, source, sub, config: RetrieverConfig, progress: bool, corpus_name: str):
        from medret.index.build import build_dense_index, load_dense_index
        from medret.index.medrag import medrag_index_dir, open_medrag_index

        params = {"nprobe": config.nprobe, "ef_search": config.ef_search, "rerank": config.rerank}
        kind, where = locate(source, len(sub), self.spec, self.identity, config)
        if kind in ("own", "copy"):
            if kind == "copy":
                log.info("using %s: built from the same model files (%s)", where, self.identity.describe())
            return load_dense_index(where, sub, self.spec, device=self.device, corpus_name=corpus_name,
                                    identity=self.identity, **params)
        if kind == "medrag":
            log.info("using MedRAG's precomputed index %s", where)
            ix = open_medrag_index(where, sub, metric=self.spec.metric, cache_dir=Path(source.artifact_dir) / "index")
            ix.set_search_params(**params)
            return ix.to(self.device, half=fp16_storage(config, self.device)) if self.device != "cpu" else ix
        if kind == "build_legacy":
            from medret.index.identity import legacy_dir

            log.warning("ignoring the dense index at %s: medret's first layout did not record which model weights "
                        "built it; building %s for %s (delete the old folder to free its space)",
                        legacy_dir(source, self.spec), where, self.identity.describe())
        if kind == "legacy":
            raise IndexBuildError(legacy_message(where, self.spec, self.identity, corpus_name, config))
        if kind == "missing":
            from medret.corpus.embeddings import fetch_hint

            medrag = medrag_index_dir(source.root, self.spec) if medrag_applies(self.spec) else None
            fetch = fetch_hint(source.name, self.spec.doc_model, config.db_dir) if medrag else None
            raise IndexBuildError(
                f"no {self.spec.name} index for {source.name!r} (looked for {where}"
                + (f" and MedRAG's {medrag}" if medrag else "") + f"); build it with `medret index build --corpus "
                f"{corpus_name} --retriever {config.retriever_name} --db-dir DIR --device cuda:0` (and your model "
                "flags)" + (f", or fetch MedRAG's precomputed embeddings: `{fetch}`" if fetch else
                           f", or unpack MedRAG's precomputed embeddings into {medrag}" if medrag else ""))
        build_dense_index(sub, self.spec, where, device=self.device, batch_size=self.batch_size,
                          fp16_storage=fp16_storage(config, self.device), progress=progress,
                          encoder=self.encoder, corpus_name=corpus_name, identity=self.identity)
        return load_dense_index(where, sub, self.spec, device=self.device, corpus_name=corpus_name,
                                identity=self.identity, **params)

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
