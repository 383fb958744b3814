"""`medret index build`: the document store(s) and every index a retriever name needs."""
from __future__ import annotations

from typing import Iterator

from medret.config import RetrieverConfig
from medret.corpus.registry import resolve_corpus
from medret.corpus.store import build_store, open_corpus_store
from medret.engine import retriever_parts


def build_all(config: RetrieverConfig, index_type: str = "flat", rebuild: bool = False,
              progress: bool = True, adopt_legacy: bool = False) -> Iterator[str]:
    """Build what ``config`` needs; yields one line per step for the CLI. ``adopt_legacy``: move dense indexes of
    medret's first layout into the new one, recording the configured encoder, instead of encoding again."""
    parts = retriever_parts(config.retriever_name)
    corpus = resolve_corpus(config.corpus_name, config.db_dir, config.cache_dir)
    if rebuild:
        for s in corpus.sources:
            build_store(s, progress=progress)
    store = open_corpus_store(corpus, build=True, progress=progress)
    yield f"document store: {corpus.display_name}, {len(store)} snippets"
    for part in parts:
        if part == "bm25":
            from medret.index.bm25 import build_bm25

            folder = corpus.artifact_dir / "bm25"
            build_bm25(store, folder, progress=progress, only_if_missing=not rebuild)
            yield f"BM25 index: {folder}"
            continue
        from medret.device import resolve_device
        from medret.encoders.specs import spec_for
        from medret.index.build import build_dense_index, read_manifest
        from medret.index.dense_searcher import fp16_storage, source_stores
        from medret.index.identity import adopt_legacy as adopt, encoder_identity, keyed_dir, legacy_dir

        from medret.encoders.locate import model_location

        spec = spec_for(part, config)
        identity = encoder_identity(spec, config.doc_model, config.query_model, config.models_dir)
        device = resolve_device(config.device, config.gpu_id, config.allow_cpu_fallback)
        doc_model_path = model_location(spec.doc_model, config.doc_model, config.models_dir)
        for (_, sub), source in zip(source_stores(store), corpus.sources):
            out = keyed_dir(source, identity)
            if adopt_legacy and read_manifest(out) is None:
                old = legacy_dir(source, spec)
                if read_manifest(old) is not None:
                    adopt(old, out, identity, sub)
                    yield f"{spec.name} index for {source.name}: adopted {old} as {out} ({identity.describe()})"
            build_dense_index(sub, spec, out, device=device, batch_size=config.batch_size, index_type=index_type,
                              rebuild=rebuild,
                              fp16_storage=fp16_storage(config, device),
                              progress=progress, doc_model_path=doc_model_path, corpus_name=corpus.display_name,
                              identity=identity)
            yield f"{spec.name} index ({index_type}) for {source.name}: {out}"
