"""Dense vector indexes: exact search over (memory-mapped, fp16 or fp32) embeddings, and faiss indexes.

Score convention (everywhere in this module): **higher is better**.

* metric ``ip``: the score is the inner product ``q·x``.
* metric ``l2``: the score is the *negative squared* Euclidean distance ``-||q - x||²`` (faiss's L2
  indexes return the squared distance; it is negated here), so sorting by score descending is nearest first.

``search`` returns ``(scores float32 (n, k'), rows int64 (n, k'))`` with ``k' = min(k, ntotal)``, each row
sorted best first. Approximate indexes (HNSW, IVF) can find fewer than ``k'`` candidates for a query: those
slots hold row ``-1`` and score ``-inf`` and must be dropped by the caller.

Two backends:

* **exact** (``index_type="flat"`` over embeddings arrays): chunked matrix product + block-max selection + merge
  (:mod:`medret.index.gpu_topk`),
  in PyTorch (on CUDA when the index is moved there with :meth:`DenseIndex.to`, else CPU) with bounded
  temporary memory; the embeddings may be a list of memory-mapped ``.npy`` segments (fp16 or fp32), so
  nothing is loaded into RAM at start-up.
* **faiss**: ``IndexFlatIP``/``IndexFlatL2``, HNSW, IVF-PQ or any faiss factory string.
"""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence, Union

import numpy as np

from medret.errors import ConfigError, IndexBuildError
from medret.index.gpu_topk import DEFAULT_TEMP_BYTES

logger = logging.getLogger(__name__)

DESCRIPTOR = "dense.json"
FAISS_FILE = "faiss.index"
ROW_MAP_FILE = "row_map.npy"
NAMED_TYPES = ("flat", "hnsw", "ivfpq")

Embeddings = Union[np.ndarray, Sequence[np.ndarray]]


# ================================================================================================ exact


def _segments(emb: Any) -> list[Any]:
    if isinstance(emb, np.ndarray) or _is_tensor(emb):
        return [emb]
    segs = list(emb)
    return segs


def _is_tensor(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "dim")


def _check_query(qemb: Any, dim: int) -> np.ndarray:
    q = np.asarray(qemb)
    if q.ndim == 1:
        q = q[None, :]
    if q.ndim != 2 or q.shape[1] != dim:
        raise ConfigError(f"qemb.shape={tuple(np.shape(qemb))} is invalid: expected (n_queries, {dim})")
    return np.ascontiguousarray(q, dtype=np.float32)


def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ConfigError(f"k={k!r} is invalid: give a positive integer")
    return int(k)


def exact_search(
    emb: Embeddings | Any,
    qemb: np.ndarray,
    k: int,
    metric: str = "ip",
    chunk_rows: int | None = None,
    device: str | None = None,
    max_temp_bytes: int = DEFAULT_TEMP_BYTES,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k over ``emb`` (see the module docstring for the score convention), as numpy arrays.

    ``emb`` is an array (possibly a ``np.memmap``, fp16 or fp32), a list of such segments (row numbers run
    across them in order), or a torch tensor / list of tensors already on ``device``. The search itself is
    :func:`medret.index.gpu_topk.exact_topk` (chunked matmul with block-max selection, bounded temporary memory;
    fp16 tensor cores on CUDA with an fp32 rescore, float32 on CPU).
    """
    import torch

    from medret.index.gpu_topk import exact_topk

    segs = _segments(emb)
    if not segs:
        raise ConfigError("emb=[] is invalid: no embeddings to search")
    q = _check_query(qemb, int(segs[0].shape[1]))
    k = _check_k(k)
    if device is None:
        device = str(segs[0].device) if _is_tensor(segs[0]) else "cpu"
    scores, rows = exact_topk(segs, torch.from_numpy(q).to(device), k, chunk_rows, metric=metric,
                              max_temp_bytes=max_temp_bytes)
    return scores.cpu().numpy().astype(np.float32, copy=False), rows.cpu().numpy().astype(np.int64, copy=False)


# ================================================================================================ faiss


def _faiss():
    try:
        import faiss
    except ImportError as e:  # pragma: no cover
        raise ConfigError(
            "index_type needs faiss, which is not installed: pip install 'medret[dense]' (faiss-cpu)"
        ) from e
    return faiss


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
    * ``ivfpq``: ``IVF{nlist},PQ{m}x{nbits}`` with ``nlist ≈ 4·sqrt(N)`` (a power of two, at least 39 training
      points per list), ``m`` = the largest divisor of ``dim`` ≤ min(96, dim/4) (8-dim sub-vectors for 768-d
      MedCPT: 96 bytes a vector instead of 1,536 in fp16) and ``nbits`` = 8 (fewer for tiny corpora so the
      codebooks can be trained).
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
        return f"IVF{nlist},PQ{m}x{nbits}"
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


def metric_of_faiss(index: Any) -> str:
    faiss = _faiss()
    mt = index.metric_type
    if mt == faiss.METRIC_INNER_PRODUCT:
        return "ip"
    if mt == faiss.METRIC_L2:
        return "l2"
    raise IndexBuildError(f"faiss index metric_type={mt!r} is not supported: medret handles inner product and L2")


# ================================================================================================ index


def map_rows(rows: np.ndarray, row_map: np.ndarray | None) -> np.ndarray:
    """Index positions → store rows through ``row_map`` (if any); -1 ("nothing found") stays -1."""
    if row_map is None:
        return rows
    mapped = np.full_like(rows, -1)
    valid = rows >= 0
    mapped[valid] = row_map[rows[valid]]
    return mapped


class DenseIndex:
    """A dense index over ``ntotal`` vectors; see the module docstring for conventions.

    Build one with :meth:`build` (from an array) or load one with :meth:`load`. ``row_map`` (optional,
    int64 of length ``ntotal``) translates index positions to document-store rows, e.g. for MedRAG's
    precomputed indexes whose order differs from the store's.
    """

    def __init__(
        self,
        *,
        metric: str,
        dim: int,
        index_type: str,
        embeddings: Sequence[Any] | None = None,
        faiss_index: Any = None,
        row_map: np.ndarray | None = None,
        search_params: dict[str, Any] | None = None,
        chunk_rows: int | None = None,
        embedding_files: Sequence[str] | None = None,
    ) -> None:
        if metric not in ("ip", "l2"):
            raise ConfigError(f"metric={metric!r} is invalid: use 'ip' or 'l2'")
        if (embeddings is None) == (faiss_index is None):
            raise ConfigError("DenseIndex needs exactly one of embeddings= (exact search) or faiss_index=")
        self.metric = metric
        self.dim = int(dim)
        self.index_type = index_type
        self.faiss_index = faiss_index
        self.embeddings: list[Any] | None = list(embeddings) if embeddings is not None else None
        self.embedding_files = list(embedding_files) if embedding_files else None
        self.search_params = dict(search_params or {})
        self.chunk_rows = chunk_rows
        self.device = "cpu"
        if faiss_index is not None:
            if int(faiss_index.d) != self.dim:
                raise IndexBuildError(f"faiss index dim={faiss_index.d} differs from dim={dim}")
            apply_search_params(faiss_index, self.search_params)
            self.ntotal = int(faiss_index.ntotal)
        else:
            assert self.embeddings is not None
            for i, e in enumerate(self.embeddings):
                if len(e.shape) != 2 or int(e.shape[1]) != self.dim:
                    raise IndexBuildError(f"embeddings[{i}].shape={tuple(e.shape)} is invalid: expected (rows, {dim})")
            self.ntotal = sum(int(e.shape[0]) for e in self.embeddings)
        if row_map is not None:
            row_map = np.asarray(row_map, dtype=np.int64)
            if row_map.shape != (self.ntotal,):
                raise IndexBuildError(
                    f"row_map has {row_map.shape[0] if row_map.ndim else 0} entries but the index has {self.ntotal} vectors"
                )
        self.row_map = row_map

    # ----------------------------------------------------------------- properties
    @property
    def backend(self) -> str:
        return "faiss" if self.faiss_index is not None else "exact"

    @property
    def dtype(self) -> str:
        if self.embeddings:
            return str(self.embeddings[0].dtype).replace("torch.", "")
        return "float32"

    def memory_bytes(self) -> int:
        """Bytes of vector data (on disk / mapped); an estimate for faiss indexes."""
        if self.embeddings is not None:
            return sum(int(e.shape[0]) * int(e.shape[1]) * (2 if "16" in str(e.dtype) else 4) for e in self.embeddings)
        return int(self.ntotal) * self.dim * 4

    # ----------------------------------------------------------------- building
    @classmethod
    def build(
        cls,
        emb: np.ndarray,
        metric: str = "ip",
        index_type: str = "flat",
        *,
        search_params: dict[str, Any] | None = None,
        train_size: int | None = None,
        seed: int = 0,
        exact_flat: bool | None = None,
    ) -> "DenseIndex":
        """Build an index from an in-memory (n, d) array.

        ``flat`` uses faiss ``IndexFlatIP``/``IndexFlatL2`` for float32 arrays and the exact PyTorch path for
        fp16 arrays (faiss stores float32 only); ``exact_flat`` forces either choice.
        """
        if not isinstance(index_type, str) or not index_type.strip():
            raise ConfigError(f"index_type={index_type!r} is invalid: use {', '.join(NAMED_TYPES)} or a faiss factory string")
        emb = np.asarray(emb)
        if emb.ndim != 2 or emb.shape[0] == 0:
            raise ConfigError(f"emb.shape={emb.shape} is invalid: expected a non-empty (n, d) array")
        n, d = emb.shape
        factory = factory_string(index_type, d, n)
        if factory == "Flat" and (exact_flat or (exact_flat is None and emb.dtype != np.float32)):
            return cls(metric=metric, dim=d, index_type="flat", embeddings=[emb])
        index = new_faiss_index(d, metric, factory)
        train_faiss_index(index, lambda: iter([emb]), n, train_size=train_size, seed=seed)
        for s in range(0, n, 65536):
            index.add(np.ascontiguousarray(emb[s : s + 65536], dtype=np.float32))
        params = default_search_params(factory)
        params.update(search_params or {})
        return cls(metric=metric, dim=d, index_type=index_type.strip() if factory != "Flat" else "flat",
                   faiss_index=index, search_params=params)

    # ----------------------------------------------------------------- searching
    def to(self, device: str) -> "DenseIndex":
        """Make the exact backend's embeddings resident on ``device`` (one tensor, their dtype kept).

        On ``cpu`` the embeddings stay memory-mapped. faiss indexes stay on CPU.
        """
        if self.embeddings is None or str(device) == "cpu":
            self.device = "cpu" if self.embeddings is None else str(device)
            return self
        import torch

        first = self.embeddings[0]
        dt = first.dtype if _is_tensor(first) else torch.from_numpy(np.zeros(0, dtype=first.dtype)).dtype
        full = torch.empty((self.ntotal, self.dim), dtype=dt, device=device)
        off = 0
        for e in self.embeddings:
            rows = int(e.shape[0])
            for s in range(0, rows, 1 << 18):
                stop = min(rows, s + (1 << 18))
                part = e[s:stop] if _is_tensor(e) else torch.from_numpy(np.ascontiguousarray(e[s:stop]))
                full[off + s : off + stop].copy_(part, non_blocking=False)
            off += rows
        self.embeddings = [full]
        self.device = str(device)
        logger.info("dense index: %d x %d %s embeddings resident on %s", self.ntotal, self.dim, dt, device)
        return self

    def search(self, qemb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k for each query: ``(scores float32 (n, k'), rows int64 (n, k'))``, higher score = better."""
        q = _check_query(qemb, self.dim)
        k = _check_k(k)
        kk = min(k, self.ntotal)
        if self.faiss_index is not None:
            dist, rows = self.faiss_index.search(q, kk)
            scores = dist.astype(np.float32, copy=False)  # faiss hands back fresh arrays: no copy needed
            rows = rows.astype(np.int64, copy=False)
            if self.metric == "l2":
                scores = -scores
            scores[rows < 0] = -np.inf
        else:
            assert self.embeddings is not None
            scores, rows = exact_search(
                self.embeddings, q, kk, self.metric, chunk_rows=self.chunk_rows,
                device=self.device if self.device != "cpu" else None,
            )
        return scores, map_rows(rows, self.row_map)

    def set_search_params(self, **params: Any) -> None:
        self.search_params.update({k: v for k, v in params.items() if v is not None})
        if self.faiss_index is not None:
            apply_search_params(self.faiss_index, self.search_params)

    # ----------------------------------------------------------------- persistence
    def descriptor(self) -> dict[str, Any]:
        return {
            "format": "medret-dense-index",
            "format_version": 1,
            "backend": self.backend,
            "metric": self.metric,
            "dim": self.dim,
            "ntotal": self.ntotal,
            "index_type": self.index_type,
            "dtype": self.dtype,
            "faiss_file": FAISS_FILE if self.faiss_index is not None else None,
            "embedding_files": self.embedding_files,
            "row_map_file": ROW_MAP_FILE if self.row_map is not None else None,
            "search_params": self.search_params,
        }

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the index to ``directory`` atomically (temp dir renamed when complete)."""
        from medret.atomic import atomic_path

        directory = Path(directory)
        with atomic_path(directory) as tmp:
            tmp.mkdir(parents=True)
            self.write_into(tmp)
        return directory

    def write_into(self, directory: Path, embedding_files: Sequence[str] | None = None) -> None:
        """Write the index files into an existing (temporary) directory; no rename."""
        if self.faiss_index is not None:
            _faiss().write_index(self.faiss_index, str(directory / FAISS_FILE))
        elif embedding_files is not None:
            self.embedding_files = list(embedding_files)
        else:
            assert self.embeddings is not None
            files = []
            for i, e in enumerate(self.embeddings):
                name = f"emb_{i:06d}.npy"
                arr = e.cpu().numpy() if _is_tensor(e) else np.asarray(e)
                np.save(directory / name, arr, allow_pickle=False)
                files.append(name)
            self.embedding_files = files
        if self.row_map is not None:
            np.save(directory / ROW_MAP_FILE, self.row_map, allow_pickle=False)
        (directory / DESCRIPTOR).write_text(json.dumps(self.descriptor(), indent=2))

    @classmethod
    def load(cls, directory: str | os.PathLike[str], mmap: bool = True, **search_params: Any) -> "DenseIndex":
        """Load an index saved by :meth:`save` (or by the index builder). Embeddings are memory-mapped."""
        directory = Path(directory)
        desc_path = directory / DESCRIPTOR
        if not desc_path.is_file():
            raise IndexBuildError(f"no dense index at {str(directory)!r}: {DESCRIPTOR} is missing; build the index first")
        try:
            desc = json.loads(desc_path.read_text())
        except (OSError, ValueError) as e:
            raise IndexBuildError(f"{str(desc_path)!r} is damaged ({e}); rebuild the index") from e
        row_map = None
        if desc.get("row_map_file"):
            row_map = np.load(directory / desc["row_map_file"], mmap_mode="r" if mmap else None)
        params = dict(desc.get("search_params") or {})
        params.update({k: v for k, v in search_params.items() if v is not None})
        if desc["backend"] == "faiss":
            index = read_faiss_index(directory / desc["faiss_file"], mmap=mmap)
            return cls(metric=desc["metric"], dim=desc["dim"], index_type=desc["index_type"], faiss_index=index,
                       row_map=row_map, search_params=params)
        files = desc.get("embedding_files") or []
        embs = []
        for f in files:
            p = directory / f
            try:
                embs.append(np.load(p, mmap_mode="r" if mmap else None, allow_pickle=False))
            except (OSError, ValueError) as e:
                raise IndexBuildError(f"embedding file {str(p)!r} cannot be read ({e}); rebuild the index") from e
        index = cls(metric=desc["metric"], dim=desc["dim"], index_type=desc["index_type"], embeddings=embs,
                    row_map=row_map, search_params=params, embedding_files=files)
        if index.ntotal != int(desc["ntotal"]):
            raise IndexBuildError(
                f"dense index at {str(directory)!r} holds {index.ntotal} vectors but its descriptor says {desc['ntotal']}; rebuild it"
            )
        return index


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


def iter_chunks(arrays: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    yield from arrays
