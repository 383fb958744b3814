"""Read MedRAG's precomputed dense indexes, so nobody re-embeds 54M snippets.

MedRAG keeps, per source (``DB_DIR/<source>/``) and per document model::

    index/<doc model id>/embedding/<chunk file stem>.npy   one float32 row per line of chunk/<stem>.jsonl
    index/<doc model id>/faiss.index                       IndexFlatIP (IndexFlatL2 for SPECTER; HNSW optional)
    index/<doc model id>/metadatas.jsonl                   one {"index": <line>, "source": <stem>} per faiss row

(``<doc model id>`` is ``ncbi/MedCPT-Article-Encoder``, ``facebook/contriever`` or ``allenai/specter``.)
MedRAG adds the ``.npy`` files to its faiss index in ``sorted(os.listdir(embedding))`` order and writes
``metadatas.jsonl`` in that same order; empty chunk files have no ``.npy``. A faiss row therefore maps to
(chunk file stem, line), and through the document store to a store row: :func:`open_medrag_index` returns
a :class:`~medret.index.dense.DenseIndex` whose ``search`` yields store rows directly.
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import orjson

from medret.corpus.registry import (
    default_cache_dir,
    medrag_index_dir,  # noqa: F401 - part of this module's surface
)
from medret.errors import IndexBuildError
from medret.index.dense import DenseIndex
from medret.index.faiss_ops import metric_of_faiss, read_faiss_index
from medret.storage.atomic import atomic_path
from medret.storage.vectors import VERIFIED, verify_files

logger = logging.getLogger(__name__)

FAISS_NAME = "faiss.index"
METADATA_NAME = "metadatas.jsonl"
EMBEDDING_DIR = "embedding"


def has_medrag_faiss(index_dir: str | os.PathLike[str]) -> bool:
    d = Path(index_dir)
    return (d / FAISS_NAME).is_file() and (d / METADATA_NAME).is_file()


def has_medrag_embeddings(index_dir: str | os.PathLike[str]) -> bool:
    d = Path(index_dir) / EMBEDDING_DIR
    return d.is_dir() and any(p.suffix == ".npy" for p in d.iterdir())


def medrag_metric(doc_model: str) -> str:
    """MedRAG's metric for a model: L2 for SPECTER, inner product for the others."""
    return "l2" if "specter" in doc_model.lower() else "ip"


def _check_lfs(path: Path) -> None:
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as e:
        raise IndexBuildError(f"cannot read {path}: {e}") from e
    if head.startswith(b"version https://git-lfs"):
        raise IndexBuildError(
            f"{path} is a git-lfs pointer file, not the data: fetch the real files with `git lfs install && "
            f"git lfs pull` inside the cloned folder (or download them again)"
        )


def read_metadatas(path: str | os.PathLike[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Parse MedRAG's ``metadatas.jsonl``: (distinct stems in first-seen order, stem code per row, line per row)."""
    path = Path(path)
    _check_lfs(path)
    stems: list[str] = []
    code_of: dict[str, int] = {}
    codes: list[int] = []
    lines: list[int] = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            raw = raw.strip()
            if not raw:
                continue
            try:
                item = orjson.loads(raw)
                stem, line = item["source"], int(item["index"])
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                raise IndexBuildError(
                    f"{path} line {lineno} is not MedRAG metadata ({raw[:80]!r}); expected "
                    '{"index": <line>, "source": <chunk file stem>}'
                ) from None
            c = code_of.get(stem)
            if c is None:
                c = code_of[stem] = len(stems)
                stems.append(stem)
            codes.append(c)
            lines.append(line)
    return stems, np.asarray(codes, dtype=np.int32), np.asarray(lines, dtype=np.int64)


def _file_rows(store: Any) -> dict[str, tuple[int, int]] | None:
    files = getattr(store, "files", None)
    if files is None:
        return None
    out: dict[str, tuple[int, int]] = {}
    start = 0
    for stem, rows in files:
        out[stem] = (start, int(rows))
        start += int(rows)
    return out


def map_to_store_rows(store: Any, stems: Sequence[str], codes: np.ndarray, lines: np.ndarray, where: str) -> np.ndarray:
    """Store rows of (stems[codes[i]], lines[i]), checking each stem exists and each line is in range."""
    table = _file_rows(store)
    starts = np.empty(len(stems), dtype=np.int64)
    sizes = np.empty(len(stems), dtype=np.int64)
    for j, stem in enumerate(stems):
        if table is not None:
            if stem not in table:
                raise IndexBuildError(
                    f"{where} refers to chunk file {stem!r}.jsonl, which this corpus does not have: the index belongs "
                    "to another corpus or the chunk files changed; use the matching chunk files or rebuild the index"
                )
            starts[j], sizes[j] = table[stem]
        else:
            try:
                starts[j] = int(store.row_of(stem, 0))
            except (KeyError, Exception) as e:  # noqa: BLE001 - the store's own error type
                raise IndexBuildError(f"{where} refers to chunk file {stem!r}.jsonl, unknown to the store "
                                      f"({e})") from None
            sizes[j] = np.iinfo(np.int64).max
    bad = (lines < 0) | (lines >= sizes[codes])
    if bad.any():
        i = int(np.nonzero(bad)[0][0])
        raise IndexBuildError(
            f"{where} row {i} points to line {int(lines[i])} of {stems[codes[i]]}.jsonl, which has only "
            f"{int(sizes[codes[i]])} snippets in this corpus: the chunk files changed since MedRAG's index was built"
        )
    return starts[codes] + lines


def _maybe_identity(row_map: np.ndarray) -> np.ndarray | None:
    if row_map.size and row_map[0] == 0 and np.array_equal(row_map, np.arange(row_map.size, dtype=np.int64)):
        return None
    return row_map


def embedding_files(index_dir: str | os.PathLike[str]) -> list[Path]:
    """The ``embedding/*.npy`` files in the order MedRAG adds them to its index (sorted by file name)."""
    d = Path(index_dir) / EMBEDDING_DIR
    if not d.is_dir():
        raise IndexBuildError(f"no MedRAG embeddings at {d}")
    return [d / name for name in sorted(os.listdir(d)) if name.endswith(".npy")]


def open_medrag_embeddings(
    index_dir: str | os.PathLike[str],
    store: Any,
    metric: str | None = None,
    mmap: bool = True,
) -> DenseIndex:
    """An exact (flat) index over MedRAG's per-chunk ``.npy`` embeddings, memory-mapped, rows mapped to the store."""
    index_dir = Path(index_dir)
    files = embedding_files(index_dir)
    if not files:
        raise IndexBuildError(f"no .npy files in {index_dir / EMBEDDING_DIR}")
    metric = metric or medrag_metric(str(index_dir))
    arrays = []
    stems = []
    for p in files:
        _check_lfs(p)
        try:
            arr = np.load(p, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise IndexBuildError(f"MedRAG embedding file {p} cannot be read ({e}); download it again") from e
        if arr.ndim != 2:
            raise IndexBuildError(f"MedRAG embedding file {p} has shape {arr.shape}; expected (rows, dim)")
        arrays.append(arr)
        stems.append(p.stem)
    dim = int(arrays[0].shape[1])
    table = _file_rows(store)
    for p, arr in zip(files, arrays):
        if arr.shape[1] != dim:
            raise IndexBuildError(f"MedRAG embedding file {p} has dim {arr.shape[1]}, others {dim}")
        if table is not None and p.stem in table and table[p.stem][1] != arr.shape[0]:
            raise IndexBuildError(
                f"MedRAG embedding file {p} has {arr.shape[0]} rows but chunk file {p.stem}.jsonl has "
                f"{table[p.stem][1]} snippets: the embeddings belong to other chunk files; re-download them or rebuild"
            )
    damage = verify_files(arrays, files, default_cache_dir() / VERIFIED)  # every vector once, then recorded
    if damage is not None:
        raise IndexBuildError(f"MedRAG's embeddings in {index_dir / EMBEDDING_DIR} are damaged: {damage}; they cannot "
                              "be served. Download them again (`medret corpus download ... --embeddings`), or build "
                              "medret's own index (`medret index build ... --rebuild`)")
    codes = np.repeat(np.arange(len(arrays), dtype=np.int32), [a.shape[0] for a in arrays])
    lines = np.concatenate([np.arange(a.shape[0], dtype=np.int64) for a in arrays])
    row_map = map_to_store_rows(store, stems, codes, lines, str(index_dir / EMBEDDING_DIR))
    logger.info("MedRAG embeddings %s: %d files, %d x %d %s (memory-mapped=%s)",
                index_dir, len(arrays), int(codes.size), dim, arrays[0].dtype, mmap)
    return DenseIndex(metric=metric, dim=dim, index_type="flat", embeddings=arrays,
                      row_map=_maybe_identity(row_map), embedding_files=[str(p) for p in files])


def open_medrag_faiss(
    index_dir: str | os.PathLike[str],
    store: Any,
    mmap: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
) -> DenseIndex:
    """MedRAG's ``faiss.index`` with ``metadatas.jsonl`` translated to store rows.

    Parsing a 24M-line ``metadatas.jsonl`` takes a while; with ``cache_dir`` the row map is cached as
    ``.npy`` keyed by the metadata file's size and mtime and the store checksum.
    """
    index_dir = Path(index_dir)
    fpath, mpath = index_dir / FAISS_NAME, index_dir / METADATA_NAME
    for p in (fpath, mpath):
        if not p.is_file():
            raise IndexBuildError(f"MedRAG index file {p} is missing")
    _check_lfs(fpath)
    index = read_faiss_index(fpath, mmap=mmap)
    row_map = None
    cache_file = None
    if cache_dir is not None:
        st = mpath.stat()
        stamp = f"{mpath.resolve()}|{st.st_size}|{st.st_mtime_ns}|{getattr(store, 'checksum', '')}"
        key = hashlib.sha256(stamp.encode()).hexdigest()[:16]
        cache_file = Path(cache_dir) / f"medrag_rowmap_{key}.npy"
        if cache_file.is_file():
            row_map = np.load(cache_file)
    if row_map is None:
        stems, codes, lines = read_metadatas(mpath)
        row_map = map_to_store_rows(store, stems, codes, lines, str(mpath))
        if cache_file is not None:
            with atomic_path(cache_file) as tmp:
                with open(tmp, "wb") as f:
                    np.save(f, row_map)
    if row_map.shape[0] != int(index.ntotal):
        raise IndexBuildError(
            f"{mpath} lists {row_map.shape[0]} rows but {fpath} holds {int(index.ntotal)} vectors: the two files "
            "come from different builds; download both again"
        )
    metric = metric_of_faiss(index)
    kind = type(index).__name__
    index_type = "hnsw" if "HNSW" in kind else ("flat" if "Flat" in kind else kind)
    logger.info("MedRAG faiss index %s: %s, %d x %d, metric %s", fpath, kind, int(index.ntotal), int(index.d), metric)
    return DenseIndex(metric=metric, dim=int(index.d), index_type=index_type, faiss_index=index,
                      row_map=_maybe_identity(row_map))


def open_medrag_index(
    index_dir: str | os.PathLike[str],
    store: Any,
    prefer: Literal["embeddings", "faiss"] = "embeddings",
    mmap: bool = True,
    metric: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> DenseIndex:
    """Open MedRAG's index in ``index_dir``, preferring the memory-mapped ``embedding/*.npy`` (exact search,
    no RAM at start-up) or ``faiss.index`` + ``metadatas.jsonl``; falls back to whichever exists."""
    index_dir = Path(index_dir)
    has_e, has_f = has_medrag_embeddings(index_dir), has_medrag_faiss(index_dir)
    if not (has_e or has_f):
        raise IndexBuildError(
            f"no MedRAG index at {index_dir}: expected {EMBEDDING_DIR}/*.npy or {FAISS_NAME} + {METADATA_NAME} "
            "(MedRAG's precomputed embeddings unpack there), or build one with `medret index build`"
        )
    if has_e and (prefer == "embeddings" or not has_f):
        return open_medrag_embeddings(index_dir, store, metric=metric, mmap=mmap)
    return open_medrag_faiss(index_dir, store, mmap=mmap, cache_dir=cache_dir)
