"""faiss helpers of a dense index: factory strings, building, training, reading, search parameters, and what kind
of storage an index keeps (exact or lossy).

Plain functions over faiss objects (the dense extra: ``pip install 'medret[dense]'``, faiss-cpu); the index
class that uses them is :class:`medret.index.dense.DenseIndex`.
"""
from __future__ import annotations

import logging
import math
import os
from typing import Any

import numpy as np

from medret import optional
from medret.errors import ConfigError, IndexBuildError

logger = logging.getLogger(__name__)

NAMED_TYPES = ("flat", "hnsw", "ivfpq")


def _faiss() -> Any:
    try:
        return optional.faiss()
    except ImportError as e:  # pragma: no cover
        raise ConfigError(
            "index_type needs faiss, which is not installed: pip install 'medret[dense]' (faiss-cpu)"
        ) from e


def faiss_metric(metric: str) -> int:
    faiss = _faiss()
    if metric == "ip":
        return faiss.METRIC_INNER_PRODUCT
    if metric == "l2":
        return faiss.METRIC_L2
    raise ConfigError(f"metric={metric!r} is invalid: use 'ip' or 'l2'")


def _largest_divisor_at_most(n: int, cap: int) -> int:
    for m in range(max(1, min(cap, n)), 0, -1):
        if n % m == 0:
            return m
    return 1


def factory_string(index_type: str, dim: int, ntotal: int) -> str:
    """The faiss factory string medret uses for ``index_type`` at this size.

    * ``flat``: ``Flat`` (exact).
    * ``hnsw``: ``HNSW32,Flat`` (M=32; efConstruction 200, efSearch 128 set by :func:`new_faiss_index`).
    * ``ivfpq``: ``IVF{nlist},PQ{m}x{nbits}np`` with ``nlist ≈ 4·sqrt(N)`` (a power of two, at least 39 training
      points per list), ``m`` = the largest divisor of ``dim`` ≤ min(96, dim/4) (8-dim sub-vectors for 768-d
      MedCPT: 96 bytes a vector instead of 1,536 in fp16) and ``nbits`` = 8 (fewer for tiny corpora so the
      codebooks can be trained); ``np``: no polysemous training, which only serves polysemous search (never
      used here) and took ~3/4 of the build time (82.9 s → 22.2 s for 20k × 128, same recall).
    * anything else is taken as a faiss factory string and passed through.
    """
    t = index_type.strip()
    low = t.lower()
    if low == "flat":
        return "Flat"
    if low == "hnsw":
        return "HNSW32,Flat"
    if low == "ivfpq":
        n = max(int(ntotal), 1)
        nlist = 2 ** max(0, round(math.log2(max(1.0, 4 * math.sqrt(n)))))
        nlist = max(1, min(nlist, n // 39 if n >= 39 else 1))
        m = _largest_divisor_at_most(dim, min(96, max(1, dim // 4)))
        nbits = 8 if n >= 256 * 39 else max(4, min(8, int(math.log2(max(16, n // 39)))))
        return f"IVF{nlist},PQ{m}x{nbits}np"
    return t


def default_search_params(factory: str) -> dict[str, int]:
    f = factory.upper()
    params: dict[str, int] = {}
    if f.startswith("IVF") or ",IVF" in f:
        try:
            nlist = int(f.split("IVF", 1)[1].split(",")[0].split("_")[0])
        except ValueError:
            nlist = 1
        params["nprobe"] = int(min(nlist, max(8, nlist // 16)))
    if "HNSW" in f:
        params["ef_search"] = 128
    return params


#: common encoder widths: with the model's own unknown, a factory string faiss builds for none of them is refused
PROBE_DIMS = (768, 1024, 384, 512, 4096)
INDEX_TYPE_FORMS = (f"{', '.join(NAMED_TYPES)} (any case), or a faiss factory string such as 'IVF4096,PQ96np' or "
                    "'HNSW32,Flat'")


def check_index_type(index_type: Any, metric: str = "ip", dim: int | None = None,
                     field: str = "index_type (--index-type)") -> str:
    """``index_type`` if medret can build it, checked before anything is encoded or written: a named type, or a faiss
    factory string that faiss builds for ``dim``-dimensional vectors (``dim`` unknown: for one of
    :data:`PROBE_DIMS`); :class:`ConfigError` naming the field, the value, the valid forms and the fix otherwise."""
    if not isinstance(index_type, str) or not index_type.strip():
        raise ConfigError(f"{field}={index_type!r} is invalid: give {INDEX_TYPE_FORMS}")
    if index_type.strip().lower() in NAMED_TYPES:
        return index_type
    problem = ""
    for d in ((dim,) if dim else PROBE_DIMS):
        problem = _faiss_refusal(d, metric, factory_string(index_type, d, 1_000_000))
        if not problem:
            return index_type
    width = f" for the model's {dim}-dimensional vectors" if dim else ""
    raise ConfigError(f"{field}={index_type!r} is invalid: faiss cannot build it{width} ({problem}); give "
                      f"{INDEX_TYPE_FORMS}" + (f" whose sub-quantizers divide {dim}" if dim else "")
                      + ". Nothing was encoded or written")


def _faiss_refusal(dim: int, metric: str, factory: str) -> str:
    """Why faiss refuses ``factory`` at ``dim`` (its last line), or '' when it builds (an empty index: cheap)."""
    try:
        new_faiss_index(dim, metric, factory)
    except ConfigError as e:
        cause = e.__cause__
        return str(cause).strip().splitlines()[-1][:200] if cause is not None and str(cause).strip() else str(e)
    return ""


def new_faiss_index(dim: int, metric: str, factory: str) -> Any:
    faiss = _faiss()
    try:
        if factory.upper().startswith("HNSW") and factory.upper().endswith(",FLAT"):
            m = int(factory[4:].split(",")[0] or 32)
            index = faiss.IndexHNSWFlat(dim, m, faiss_metric(metric))
            index.hnsw.efConstruction = 200
        else:
            index = faiss.index_factory(dim, factory, faiss_metric(metric))
    except (RuntimeError, ValueError) as e:
        raise ConfigError(
            f"index_type={factory!r} is invalid for faiss ({str(e).strip().splitlines()[-1][:200]}): use "
            f"{', '.join(NAMED_TYPES)} or a faiss factory string such as 'IVF4096,PQ96' or 'HNSW32,Flat'"
        ) from e
    return index


def apply_search_params(index: Any, params: dict[str, Any]) -> None:
    faiss = _faiss()
    if "nprobe" in params and params["nprobe"] is not None:
        try:
            faiss.extract_index_ivf(index).nprobe = int(params["nprobe"])
        except (RuntimeError, AttributeError):
            logger.debug("nprobe does not apply to %s", type(index).__name__)
    if "ef_search" in params and params["ef_search"] is not None:
        hnsw = getattr(index, "hnsw", None)
        if hnsw is not None:
            hnsw.efSearch = int(params["ef_search"])


def read_faiss_index(path: str | os.PathLike[str], mmap: bool = True) -> Any:
    """Read a faiss index, memory-mapping its codes where faiss supports it."""
    faiss = _faiss()
    path = str(path)
    if mmap:
        for flags in (faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_MMAP, faiss.IO_FLAG_MMAP):
            try:
                return faiss.read_index(path, flags)
            except RuntimeError:
                logger.debug("faiss mmap read with flags %s failed for %s", flags, path, exc_info=True)
        logger.info("faiss cannot memory-map %s; reading it into RAM", path)
    try:
        return faiss.read_index(path)
    except RuntimeError as e:
        raise IndexBuildError(
            f"faiss index {path!r} cannot be read ({str(e).strip().splitlines()[-1][:200]}): the file is damaged "
            "or was not fully written; rebuild it"
        ) from e


def write_faiss_index(index: Any, path: str | os.PathLike[str]) -> None:
    _faiss().write_index(index, str(path))


def metric_of_faiss(index: Any) -> str:
    faiss = _faiss()
    mt = index.metric_type
    if mt == faiss.METRIC_INNER_PRODUCT:
        return "ip"
    if mt == faiss.METRIC_L2:
        return "l2"
    raise IndexBuildError(f"faiss index metric_type={mt!r} is not supported: medret handles inner product and L2")


def flat_vectors(index: Any) -> np.ndarray | None:
    """The ``(ntotal, d)`` float32 vectors of a plain flat faiss index (``IndexFlat``/``IP``/``L2``), in place
    (memory-mapped when faiss mapped the file); ``None`` for any other index type or an empty one."""
    faiss = _faiss()
    ix = faiss.downcast_index(index)
    if type(ix) not in (faiss.IndexFlat, faiss.IndexFlatIP, faiss.IndexFlatL2) or int(ix.ntotal) == 0:
        return None
    if ix.metric_type not in (faiss.METRIC_INNER_PRODUCT, faiss.METRIC_L2):
        return None
    n, d = int(ix.ntotal), int(ix.d)
    return faiss.rev_swig_ptr(ix.get_xb(), n * d).reshape(n, d)


def faiss_is_lossy(index: Any) -> bool:
    """Whether ``index`` scores candidates from compressed codes rather than the full float32 vectors.

    A whitelist of the storages known to keep every vector in float32: ``IndexFlat`` (``IndexFlatIP``/``L2``),
    ``IndexIVFFlat`` (and its subclasses), graph indexes (HNSW, NSG, NNDescent) whose ``storage`` is one of those,
    ``IndexIDMap``/``IndexIDMap2`` around one of those, and ``IndexRefine`` whose refine index is one of those
    (faiss already re-scores there). **Everything else counts as lossy**: PQ / SQ / LSH / additive quantizers,
    IVF-PQ, IVF-SQ, ``IndexPreTransform`` (OPQ, PCA) and any type unknown here. A whitelist is the robust side to
    err on: re-ranking a lossless index only costs reads, while missing a lossy one costs recall. The check is
    on the (downcast) faiss classes, not on names or factory strings, so it also works for indexes read from
    disk (MedRAG's, or ones built from arbitrary factory strings) and for faiss versions that add new types.
    """
    faiss = _faiss()
    ix = faiss.downcast_index(index)
    if isinstance(ix, faiss.IndexFlat):  # IndexFlatCodes subclasses other than IndexFlat (PQ, SQ, LSH) are lossy
        return False
    if isinstance(ix, faiss.IndexIVFFlat):
        return False
    if isinstance(ix, faiss.IndexIDMap) or (hasattr(faiss, "IndexIDMap2") and isinstance(ix, faiss.IndexIDMap2)):
        return faiss_is_lossy(ix.index)
    if hasattr(faiss, "IndexRefine") and isinstance(ix, faiss.IndexRefine):
        return faiss_is_lossy(ix.refine_index)
    storage = getattr(ix, "storage", None)  # IndexHNSW / IndexNSG / IndexNNDescent keep vectors in a sub-index
    if storage is not None and not isinstance(ix, faiss.IndexPreTransform):
        return faiss_is_lossy(storage)
    return True



def train_faiss_index(
    index: Any,
    chunks: Any,
    ntotal: int,
    *,
    train_size: int | None = None,
    seed: int = 0,
) -> None:
    """Train ``index`` (if it needs it) on a uniform sample of the vectors yielded by ``chunks()``."""
    if index.is_trained:
        return
    rng = np.random.default_rng(seed)
    if train_size is None:
        train_size = min(ntotal, 256 * 1024)
    train_size = min(train_size, ntotal)
    chosen = np.sort(rng.choice(ntotal, size=train_size, replace=False))
    parts = []
    off = 0
    for arr in chunks():
        rows = arr.shape[0]
        sel = chosen[(chosen >= off) & (chosen < off + rows)] - off
        if sel.size:
            parts.append(np.asarray(arr[sel], dtype=np.float32))
        off += rows
    sample = np.ascontiguousarray(np.concatenate(parts, axis=0))
    logger.info("training faiss index on %d vectors", sample.shape[0])
    index.train(sample)
