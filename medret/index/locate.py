"""Where a retriever's indexes are, and whether each is current: decided here, once.

The searchers (:mod:`medret.index.searchers`), ``medret index build`` (:mod:`medret.index.build_all`),
``medret doctor`` and its content checks all ask these functions, so they never disagree.

* BM25 (:func:`locate_bm25`): one index over the union of a corpus's sources, ``<corpus>/medret/bm25/``; its manifest
  names the store it was built from (checksum, rows) and its files' sizes.
* Dense (:func:`locate_dense`), per source, in this order: medret's own index for this encoder
  (``<source>/medret/index/<model>-<key>/``, :mod:`medret.index.identity`), one medret built from the same model
  files elsewhere (a copy), MedRAG's precomputed one (``<source>/index/<doc model>/``, for MedCPT / Contriever /
  SPECTER with MedRAG's recipe), or — for small corpora, when auto_build is on — built now.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

from medret.config import EngineOptions
from medret.corpus.embeddings import PUBLISHED_MODELS
from medret.corpus.registry import Corpus
from medret.corpus.store import UnionStore
from medret.encoders.specs import REGISTRY, EncoderSpec
from medret.errors import MedretError
from medret.index.bm25 import check_sizes
from medret.index.hints import build_command
from medret.index.identity import (
    EncoderIdentity,
    find_copy,
    keyed_dir,
    legacy_dir,
    recorded,
)
from medret.index.manifest import read_manifest
from medret.index.medrag import (
    has_medrag_embeddings,
    has_medrag_faiss,
    medrag_index_dir,
)

AUTO_BUILD_MAX_ROWS = 100_000  # larger corpora need an explicit `medret index build` (GPU hours for MedCorp)


class Location(NamedTuple):
    """Which index serves a part, and in what state (``kind``); ``detail`` says why when it is not usable."""

    kind: str
    folder: Path
    detail: str = ""


# ------------------------------------------------------------------------------------------------ BM25


def bm25_dir(corpus: Corpus) -> Path:
    return corpus.bm25_dir


def locate_bm25(corpus: Corpus, store: Any, auto_build: bool) -> Location:
    """The BM25 index of ``corpus`` for the document store ``store``. Kinds: ``ready``, ``build`` (missing, built on
    first use), ``missing``, ``damaged`` (unreadable manifest, or a file whose size changed), ``stale`` (built from
    other chunk files than the store holds now)."""
    folder = bm25_dir(corpus)
    path = folder / "manifest.json"
    if not path.is_file():
        return Location("build" if auto_build else "missing", folder)
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return Location("damaged", folder, f"{path}: {e}")
    if manifest.get("store_checksum") != store.checksum or int(manifest.get("rows", -1)) != len(store):
        return Location("stale", folder, f"index: {manifest.get('rows')} rows; corpus now: {len(store)} rows "
                                         f"({folder})")
    try:
        check_sizes(folder, manifest)
    except MedretError as e:
        return Location("damaged", folder, str(e))
    return Location("ready", folder)


# ------------------------------------------------------------------------------------------------ dense


def medrag_applies(spec: EncoderSpec) -> bool:
    """MedRAG's precomputed index fits ``spec`` when its document model is one MedRAG embedded (by hub id; the
    weights may come from the cache, $MEDRET_MODELS_DIR or a ``--doc-model`` copy) and it encodes documents with
    MedRAG's recipe for it. A local folder configured ``--like MedCPT`` is another model: it gets its own index."""
    registered = next((s for s in REGISTRY.values() if s.doc_model == spec.doc_model
                       and s.doc_model in PUBLISHED_MODELS), None)
    return registered is not None and spec.same_encoding(registered)


def locate_dense(source: Any, size: int, spec: EncoderSpec, identity: EncoderIdentity,
                 config: EngineOptions) -> Location:
    """Which index of ``source`` (``size`` rows) serves ``identity``; kinds, in order: ``own`` (built for this
    encoder), ``copy`` (built from the same model files at another path), ``medrag`` (MedRAG's precomputed),
    ``build`` (to be built now), ``build_legacy`` (to be built now, leaving aside an index of medret's first
    layout), ``missing`` (none: build it), ``legacy`` (only an index of medret's first layout: migrate or
    rebuild). Whether an ``own``/``copy`` index matches the corpus and the model is checked when it is opened
    (:func:`medret.index.dense_build.load_dense_index`)."""
    own = keyed_dir(source, identity)
    if read_manifest(own) is not None:
        return Location("own", own)
    copy = find_copy(source, identity)
    if copy is not None:
        return Location("copy", copy)
    if medrag_applies(spec):
        medrag = medrag_index_dir(source.root, spec)
        if has_medrag_embeddings(medrag) or has_medrag_faiss(medrag):
            return Location("medrag", medrag)
    old = legacy_dir(source, spec)
    old_manifest = read_manifest(old)
    small = config.auto_build and size <= AUTO_BUILD_MAX_ROWS
    if old_manifest is not None and recorded(old_manifest) is None:
        return Location("build_legacy", own) if small else Location("legacy", old)
    return Location("build" if small else "missing", own)


def dense_indexes(source: Any) -> list[Location]:
    """Every dense index of ``source`` that :func:`locate_dense` can serve, each once: medret's own (``own``, any
    encoder; ``legacy`` for medret's first layout, which records no encoder) and MedRAG's precomputed ones
    (``medrag``: its ``embedding/*.npy`` and/or ``faiss.index``; ``detail`` names the retrievers it serves)."""
    root = Path(source.artifact_dir) / "index"
    out = [Location("own" if recorded(read_manifest(m.parent)) else "legacy", m.parent)
           for m in (sorted(root.glob("*/manifest.json")) if root.is_dir() else [])]
    medrag: dict[Path, list[str]] = {}
    for spec in REGISTRY.values():
        folder = medrag_index_dir(source.root, spec)
        if medrag_applies(spec) and (has_medrag_embeddings(folder) or has_medrag_faiss(folder)):
            medrag.setdefault(folder, []).append(spec.name)
    return out + [Location("medrag", folder, ", ".join(names)) for folder, names in medrag.items()]


def legacy_message(old: Path, identity: EncoderIdentity, corpus_name: str, config: EngineOptions) -> str:
    adopt = build_command(config, extra=["--adopt-legacy"])
    return (f"the dense index at {old} is in medret's first layout, which did not record which model weights built "
            f"it, so medret will not guess: if it was built with {identity.describe()}, move it to the new layout "
            f"with `{adopt}` (no re-encoding), else rebuild it with `{build_command(config, rebuild=True)}`")


def source_stores(store: Any) -> list[tuple[int, Any]]:
    """(row offset, store) of each source of a DocStore or UnionStore."""
    if isinstance(store, UnionStore):
        return [(store.offset_of(i), s) for i, s in enumerate(store.stores)]
    return [(0, store)]
