"""Build a dense index from a document store: resumable, atomic, with a manifest.

Layout of a finished index folder ``out_dir``::

    emb_000000.npy ...   embeddings of rows [i*chunk_rows, (i+1)*chunk_rows), fp16 (default) or fp32; searched
                         exactly by flat indexes, the re-rank vectors of lossy faiss ones (IVF-PQ)
    faiss.index          only for hnsw / ivfpq / factory-string indexes (flat searches the .npy files exactly)
    dense.json           what DenseIndex.load needs (backend, metric, files, search parameters)
    manifest.json        written last: model names, pooling, dim, count, metric, index type, dtype,
                         store checksum, medret version, file sizes, sha256 of each emb file ("emb_sha256",
                         see medret.index.emb_check), "complete": true, and under "encoder" the encoder identity
                         (model location, hub revision, weights/tokenizer/config fingerprint, recipe:
                         medret.index.identity), checked whenever the index is opened
    .medret-verified.json  the emb files whose every vector was checked (finite, non-zero, of a sound norm),
                         with their stat then: one written since is checked again at the next open
                         (medret.storage.vectors)

While building, everything goes to the sibling folder ``.<name>.partial``; each chunk file is written
under a temporary name and renamed when complete, so an interrupted build resumes at the first missing
chunk (existing chunks are verified by shape, dtype and their sha256). Only when every file is written is the
partial folder renamed onto ``out_dir``: a crash never leaves a half index where the loader looks, and the loader
checks the manifest anyway. One process builds a given index at a time (a lock file beside it, medret.storage.locks):
others wait, then find it complete.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np
from tqdm.auto import tqdm

from medret.config import EngineOptions
from medret.corpus.registry import default_cache_dir
from medret.device import resolve_device
from medret.encoders.hf import Encoder
from medret.encoders.locate import model_dim, model_location
from medret.encoders.specs import REGISTRY, EncoderSpec, spec_for
from medret.errors import ConfigError, IndexBuildError
from medret.index import emb_check
from medret.index.dense import DESCRIPTOR, FAISS_FILE, DenseIndex
from medret.index.faiss_ops import (
    check_index_type,
    default_search_params,
    factory_string,
    new_faiss_index,
    train_faiss_index,
)
from medret.index.hints import build_command
from medret.index.identity import EncoderIdentity, check, encoder_identity, mismatch
from medret.index.manifest import MANIFEST, read_manifest
from medret.retrievers import retriever_parts
from medret.storage.atomic import atomic_write_text
from medret.storage.leftovers import remove_stale
from medret.storage.locks import serialized
from medret.storage.pids import tag
from medret.storage.vectors import VERIFIED, verify_files
from medret.validate import check_whole
from medret.version import __version__

logger = logging.getLogger(__name__)

BUILD_STATE = "build.json"
FORMAT = "medret-dense-build"
FORMAT_VERSION = 1
DEFAULT_CHUNK_ROWS = 10_000
FP16_MAX = 65504.0


class StoreLike(Protocol):
    checksum: str

    def __len__(self) -> int: ...

    def get(self, rows: Sequence[int]) -> list[dict]: ...


class DocEncoder(Protocol):
    def encode_docs(self, docs: list[dict], batch_size: int = ...) -> np.ndarray: ...


def chunk_name(i: int) -> str:
    return f"emb_{i:06d}.npy"


def partial_dir(out_dir: str | os.PathLike[str]) -> Path:
    out_dir = Path(out_dir)
    return out_dir.with_name(f".{out_dir.name}.partial")


def rebuild_hint(spec_name: str | EncoderSpec, corpus: str | None) -> str:
    """The command that rebuilds the index (a spec that is not a named retriever as it is: its model folder)."""
    c = corpus or "NAME"
    if isinstance(spec_name, EncoderSpec):
        named = REGISTRY.get(spec_name.name.lower())
        r = spec_name.name if named is not None else spec_name.doc_model
        more = "" if named == spec_name else " (with the same model flags)"
        return f"`medret index build --corpus {c} --retriever {r} --rebuild`{more}"
    return f"`medret index build --corpus {c} --retriever {spec_name} --rebuild`"


def _positive_int(name: str, v: Any) -> int:
    check_whole(name, v)
    return int(v)


def _build_params(store: StoreLike, spec: EncoderSpec, index_type: str, dtype: str, chunk_rows: int,
                  identity: Any = None) -> dict[str, Any]:
    """What must match for existing chunk files to be reused."""
    enc = {k: v for k, v in spec.to_dict().items() if k not in ("name", "query_model", "query_prefix", "query_max_len")}
    params = {"store_checksum": store.checksum, "count": len(store), "encoding": enc, "dtype": dtype,
              "chunk_rows": chunk_rows}
    if identity is not None:  # chunks encoded with other weights are not resumed
        params["encoder_fingerprint"] = identity.doc.fingerprint
    return params


def _chunk_ok(path: Path, rows: int, dtype: str) -> int | None:
    """The dim of a valid chunk file with ``rows`` rows of ``dtype``, else None."""
    if not path.is_file():
        return None
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        logger.warning("chunk %s is unreadable; re-encoding it", path)
        return None
    if arr.ndim != 2 or arr.shape[0] != rows or str(arr.dtype) != dtype:
        logger.warning("chunk %s has shape %s dtype %s, expected (%d, d) %s; re-encoding it",
                       path, arr.shape, arr.dtype, rows, dtype)
        return None
    return int(arr.shape[1]) if emb_check.verified(path, arr) else None  # its sha256, or its vectors if none


def fp16_storage(config: EngineOptions, device: str) -> bool:
    """Embeddings are stored in fp16 on GPU machines (half the memory), fp32 on CPU unless asked."""
    return device.startswith("cuda") if config.fp16 is None else config.fp16


def dense_part(config: EngineOptions, part: str | None) -> str:
    """The dense retriever of ``config`` an index is built for: ``part``, or the only dense one it names."""
    if part is not None:
        return part
    dense = [p for p in retriever_parts(config.retriever_name) if p != "bm25"]
    if len(dense) != 1:
        raise ConfigError(f"retriever_name (--retriever)={config.retriever_name!r} names {len(dense)} dense "
                          "retrievers: say which one the index is for (part=...)")
    return dense[0]


@serialized("the dense index")  # one build per index at a time: others wait, then find it complete
def build_dense_index(
    store: StoreLike,
    out_dir: str | os.PathLike[str],
    config: EngineOptions,
    *,
    part: str | None = None,
    index_type: str = "flat",
    rebuild: bool = False,
    progress: bool = True,
    encoder: DocEncoder | None = None,
    identity: EncoderIdentity | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    train_size: int | None = None,
    on_chunk: Callable[[int, int], None] | None = None,
) -> Path:
    """Encode every row of ``store`` with the document encoder ``config`` configures and write a dense index to
    ``out_dir``.

    Everything about the encoder comes from ``config`` (:class:`medret.config.EngineOptions`): the retriever
    (``part``: which of its dense retrievers, default the only one) and its recipe options, the model folders,
    the device, the batch size, fp16 storage (:func:`fp16_storage`), the faiss search parameters saved with the
    index (``nprobe``, ``ef_search``, ``rerank``), and the ``--rebuild`` command of every message.
    Resumes an interrupted build; returns ``out_dir`` unchanged if a complete index for the same store and
    encoding already exists (pass ``rebuild=True`` to replace it; an index built for something else is
    refused unless ``rebuild``). ``on_chunk(chunk_index, rows_done)`` is called after each chunk file is
    written. ``encoder``: one already loaded for this configuration (default :class:`medret.encoders.hf.Encoder`,
    loaded only if something is left to encode); ``identity``: its
    :class:`medret.index.identity.EncoderIdentity` when the caller holds it already (default: computed from
    ``config``), recorded in the manifest and matched against an existing index.
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    spec = spec_for(dense_part(config, part), config)
    batch_size = _positive_int("batch_size", config.batch_size)
    chunk_rows = _positive_int("chunk_rows", chunk_rows)
    doc_model_path = model_location(spec.doc_model, config.doc_model, config.models_dir)
    check_index_type(index_type, spec.metric, getattr(encoder, "dim", None) or model_dim(doc_model_path))
    n = len(store)
    if n == 0:
        raise IndexBuildError(f"the document store is empty: nothing to index into {out_dir}")
    device = resolve_device(config.device, config.gpu_id, config.allow_cpu_fallback)
    dtype = "float16" if fp16_storage(config, device) else "float32"
    if identity is None:
        identity = encoder_identity(spec, config.doc_model, config.query_model, config.models_dir)
    params = _build_params(store, spec, index_type, dtype, chunk_rows, identity)
    hint = f"`{build_command(config, index_type, rebuild=True)}`"

    existing = read_manifest(out_dir)
    if existing is not None and existing.get("complete") and not rebuild:
        why = mismatch(existing, identity)
        same = (existing.get("store_checksum") == store.checksum and existing.get("count") == n
                and existing.get("index_type") == index_type and why is None)
        if same:
            logger.info("dense index %s is complete and up to date; nothing to do", out_dir)
            return out_dir
        raise IndexBuildError(
            f"a different dense index already exists at {out_dir} (built for store checksum "
            f"{existing.get('store_checksum')!r}, {existing.get('count')} rows, index type "
            f"{existing.get('index_type')!r}" + (f"; {why}" if why else "") + f"); to replace it run {hint} "
            "(rebuild=True)"
        )

    work = partial_dir(out_dir)
    remove_stale(out_dir)  # .<name>.old-PID of a replace that was killed (we hold the lock)
    if work.exists():
        state = None
        try:
            state = json.loads((work / BUILD_STATE).read_text())
        except (OSError, ValueError):
            pass
        if state == params:
            logger.info("resuming the interrupted build in %s", work)
        else:
            logger.warning("discarding %s: it was started for another store, model or settings", work)
            shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    for leftover in work.glob(".*.tmp-*"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
    atomic_write_text(work / BUILD_STATE, json.dumps(params, indent=2, sort_keys=True))

    n_chunks = (n + chunk_rows - 1) // chunk_rows
    spans = [(i, i * chunk_rows, min(n, (i + 1) * chunk_rows)) for i in range(n_chunks)]
    dim: int | None = None
    todo = []
    done_rows = 0
    for i, s, e in spans:
        d = _chunk_ok(work / chunk_name(i), e - s, dtype)
        if d is None:
            todo.append((i, s, e))
        else:
            if dim is not None and d != dim:
                raise IndexBuildError(f"chunk files in {work} disagree on the dimension ({dim} vs {d}); delete {work}")
            dim = d
            done_rows += e - s
    if done_rows:
        logger.info("%d of %d rows already encoded in %s; encoding the remaining %d", done_rows, n, work, n - done_rows)

    bar = None
    if todo:
        if encoder is None:
            encoder = Encoder(spec, device=device, fp16=config.fp16, load_query=False,
                              doc_model_path=config.doc_model, models_dir=config.models_dir)
        if progress:
            bar = tqdm(total=n, initial=done_rows, unit="doc", unit_scale=True, smoothing=0.05,
                       desc=f"embed {spec.name}", dynamic_ncols=True)
    last_log = time.monotonic()
    try:
        for i, s, e in todo:
            docs = store.get(range(s, e))
            emb = np.asarray(encoder.encode_docs(docs, batch_size=batch_size))  # type: ignore[union-attr]
            if emb.ndim != 2 or emb.shape[0] != e - s:
                raise IndexBuildError(f"the encoder returned shape {emb.shape} for {e - s} documents (rows "
                                      f"{s}..{e - 1})")
            if dim is None:
                dim = int(emb.shape[1])
            elif emb.shape[1] != dim:
                raise IndexBuildError(f"the encoder returned dim {emb.shape[1]} but earlier chunks have {dim}")
            if not np.isfinite(emb).all():
                raise IndexBuildError(f"the encoder returned NaN/inf for rows {s}..{e - 1}; check the model and fp16 "
                                      "settings")
            if dtype == "float16":
                peak = float(np.abs(emb).max()) if emb.size else 0.0
                if peak > FP16_MAX:
                    raise IndexBuildError(
                        f"embedding values up to {peak:.3g} overflow fp16 storage (max {FP16_MAX}); rebuild with "
                        "fp16=False (`medret index build ... --fp32`)"
                    )
            emb_check.write_chunk(work / chunk_name(i), emb.astype(dtype, copy=False))
            done_rows += e - s
            if bar is not None:
                bar.update(e - s)
            elif time.monotonic() - last_log > 30:
                logger.info("embedded %d / %d rows", done_rows, n)
                last_log = time.monotonic()
            if on_chunk is not None:
                on_chunk(i, done_rows)
    except BaseException:
        if bar is not None:  # erased, so that the error is the last line on the terminal (medret.progress)
            bar.leave = False
        raise
    finally:
        if bar is not None:
            bar.close()
    assert dim is not None

    # ---------------------------------------------------------------- finalize (into the partial folder)
    files = [chunk_name(i) for i, _, _ in spans]
    factory = factory_string(index_type, dim, n)
    for stale in (FAISS_FILE, DESCRIPTOR, MANIFEST):
        (work / stale).unlink(missing_ok=True)
    if factory == "Flat":
        index = DenseIndex(
            metric=spec.metric, dim=dim, index_type="flat",
            embeddings=[np.load(work / f, mmap_mode="r") for f in files],
        )
    else:
        faiss_index = new_faiss_index(dim, spec.metric, factory)

        def chunks():
            for f in files:
                yield np.load(work / f, mmap_mode="r")

        logger.info("building faiss index %s over %d vectors", factory, n)
        train_faiss_index(faiss_index, chunks, n, train_size=train_size)
        for arr in chunks():
            for s in range(0, arr.shape[0], 65536):
                faiss_index.add(np.ascontiguousarray(arr[s : s + 65536], dtype=np.float32))
        sp: dict[str, Any] = dict(default_search_params(factory))
        sp.update({k: v for k, v in (("nprobe", config.nprobe), ("ef_search", config.ef_search),
                                     ("rerank", config.refine_factor)) if v is not None})
        index = DenseIndex(metric=spec.metric, dim=dim, index_type=index_type, faiss_index=faiss_index,
                           search_params=sp)
    index.write_into(work, embedding_files=files)
    (work / BUILD_STATE).unlink(missing_ok=True)
    emb_sha256 = emb_check.collect(work, files)
    sizes = {p.name: p.stat().st_size for p in sorted(work.iterdir())
             if p.is_file() and not p.name.endswith(emb_check.SIDECAR)}
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "complete": True,
        "retriever": spec.name,
        "query_model": spec.query_model,
        "doc_model": spec.doc_model,
        "pooling": spec.pooling,
        "normalize": spec.normalize,
        "metric": spec.metric,
        "dim": dim,
        "count": n,
        "index_type": index_type,
        "faiss_factory": factory,
        "backend": index.backend,
        "dtype": dtype,
        "chunk_rows": chunk_rows,
        "store_checksum": store.checksum,
        "corpus": config.corpus_name,
        "spec": spec.to_dict(),
        "encoder": identity.to_manifest(_encode_dtype(encoder)),
        "medret_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "build_seconds": round(time.perf_counter() - t0, 3),
        "files": sizes,
        "emb_sha256": emb_sha256,  # verified on resume and by `medret doctor` (medret.index.emb_check)
    }
    atomic_write_text(work / MANIFEST, json.dumps(manifest, indent=2))
    emb_check.drop_sidecars(work)
    # every vector scanned once now (the files are in the page cache), and recorded: opening it costs a stat a file
    damage = verify_files([np.load(work / f, mmap_mode="r") for f in files], [work / f for f in files])
    if damage is not None:
        raise IndexBuildError(f"the encoder wrote damaged vectors into {work}: {damage}; check the model and its "
                              f"fp16 settings, then run {hint}")
    _commit(work, out_dir)
    logger.info("dense index %s: %d x %d %s, %s (%s) written in %.1fs", out_dir, n, dim, dtype, index_type,
                factory, time.perf_counter() - t0)
    return out_dir


def _encode_dtype(encoder: Any) -> str | None:
    fp16 = getattr(encoder, "fp16", None)
    return None if fp16 is None else ("float16" if fp16 else "float32")


def _commit(work: Path, out_dir: Path) -> None:
    """Rename the finished partial folder onto ``out_dir``, replacing an old index only after that."""
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{tag()}")
        if old.exists():
            shutil.rmtree(old)
        os.replace(out_dir, old)
        os.replace(work, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(work, out_dir)


def load_dense_index(
    index_dir: str | os.PathLike[str],
    store: StoreLike | None = None,
    spec: EncoderSpec | None = None,
    *,
    mmap: bool = True,
    device: str = "cpu",
    corpus_name: str | None = None,
    identity: EncoderIdentity | None = None,
    config: EngineOptions | None = None,
    **search_params: Any,
) -> DenseIndex:
    """Load a dense index built by :func:`build_dense_index`, refusing incomplete, stale or foreign ones.

    ``store``: its checksum and row count must match the manifest (else the corpus changed since the
    build). ``spec``: its document encoding must match the one the index was built with. ``identity``
    (:class:`medret.index.identity.EncoderIdentity`): the model and recipe recorded at build must match it (a model
    changed in place is refused with the ``--rebuild`` hint).
    ``device='cuda:N'`` moves exact (flat) embeddings onto that GPU. ``search_params`` (``nprobe``,
    ``ef_search``, ``rerank``) override the ones saved with the index. ``config``: the options in use, so that a
    message's ``--rebuild`` command carries them all (with the index type the index was built with).
    """
    index_dir = Path(index_dir)
    name = spec.name if spec is not None else "NAME"
    manifest = read_manifest(index_dir)
    if config is not None:
        built_type = manifest.get("index_type") if manifest is not None else None
        hint = f"`{build_command(config, built_type, rebuild=True)}`"
        build = f"`{build_command(config)}`"
    else:
        hint = rebuild_hint(spec if spec is not None else name, corpus_name)
        build = f"`medret index build --corpus {corpus_name or 'NAME'} --retriever {name}`"
    if manifest is None:
        if partial_dir(index_dir).exists():
            raise IndexBuildError(
                f"the dense index at {index_dir} is not complete: a build was interrupted (its work is in "
                f"{partial_dir(index_dir)}); run {build} again to resume it"
            )
        raise IndexBuildError(f"no dense index at {index_dir} ({MANIFEST} missing); build it with {build}")
    if manifest.get("format") != FORMAT or not manifest.get("complete"):
        raise IndexBuildError(f"the dense index at {index_dir} is incomplete or not a medret index; rebuild it with "
                              f"{hint}")
    for fname, size in (manifest.get("files") or {}).items():
        p = index_dir / fname
        if not p.is_file() or p.stat().st_size != size:
            raise IndexBuildError(
                f"the dense index at {index_dir} is damaged: {fname} is missing or has the wrong size; rebuild it "
                f"with {hint}"
            )
    if store is not None:
        if manifest.get("store_checksum") != store.checksum or int(manifest.get("count", -1)) != len(store):
            raise IndexBuildError(
                f"the corpus changed since the dense index at {index_dir} was built (index: "
                f"{manifest.get('count')} rows, store checksum {str(manifest.get('store_checksum'))[:16]}…; "
                f"corpus now: {len(store)} rows, checksum {str(store.checksum)[:16]}…): its rows would point to "
                f"the wrong snippets. Rebuild it with {hint}"
            )
    if identity is not None:
        check(manifest, identity, index_dir, hint)
    elif spec is not None and manifest.get("spec"):
        built = EncoderSpec.from_dict(manifest["spec"])
        if not spec.same_encoding(built):
            raise IndexBuildError(
                f"the dense index at {index_dir} was built with {built.doc_model!r} ({built.pooling} pooling, "
                f"{built.metric}) but retriever {spec.name!r} encodes documents with {spec.doc_model!r} "
                f"({spec.pooling}, {spec.metric}); use the matching retriever or rebuild with {hint}"
            )
    index = DenseIndex.load(index_dir, mmap=mmap, **search_params)
    if index.ntotal != int(manifest["count"]):
        raise IndexBuildError(f"the dense index at {index_dir} holds {index.ntotal} vectors, its manifest says "
                              f"{manifest['count']}; rebuild it with {hint}")
    check_vectors(index, index_dir, hint)
    if device and str(device) != "cpu":
        index.to(str(device))
    return index


def check_vectors(index: DenseIndex, index_dir: Path, hint: str) -> None:
    """Refuse an index whose stored vectors include damaged rows (:mod:`medret.index.emb_check`: every vector of a
    file scanned once, then recorded with the file's stat)."""
    segs = index.embeddings if index.embeddings is not None else index.rerank_vectors
    files = index.embedding_files or []
    if not segs or len(files) != len(segs):
        return
    damage = verify_files(segs, [index_dir / f for f in files], default_cache_dir() / VERIFIED)
    if damage is not None:
        raise IndexBuildError(f"the dense index at {index_dir} is damaged: {damage} (the file was overwritten or "
                              f"damaged after the build); rebuild it with {hint}")
