"""Dense vector indexes: exact search over (memory-mapped, fp16 or fp32) embeddings, and faiss indexes.

Score convention (everywhere in this module): **higher is better**.

* metric ``ip``: the score is the inner product ``q·x``.
* metric ``l2``: the score is the *negative squared* Euclidean distance ``-||q - x||²`` (faiss's L2
  indexes return the squared distance; it is negated here), so sorting by score descending is nearest first.

``search`` returns ``(scores float32 (n, k'), rows int64 (n, k'))`` with ``k' = min(k, ntotal)``, each row
sorted best first. Approximate indexes (HNSW, IVF) can find fewer than ``k'`` candidates for a query: those
slots hold row ``-1`` and score ``-inf`` and must be dropped by the caller.

Two backends:

* **exact** (``index_type="flat"`` over embeddings arrays, :mod:`medret.index.exact`): chunked matrix product +
  block-max selection + merge (:mod:`medret.index.gpu_topk`), in PyTorch (on CUDA when the index is moved there
  with :meth:`DenseIndex.to`, else CPU) with bounded temporary memory; the embeddings may be a list of
  memory-mapped ``.npy`` segments (fp16 or fp32), so nothing is loaded into RAM at start-up.
* **faiss**: ``IndexFlatIP``/``IndexFlatL2``, HNSW, IVF-PQ or any faiss factory string (the helpers:
  :mod:`medret.index.faiss_ops`).

**Re-rank of lossy faiss indexes.** When the faiss index keeps only compressed codes (IVF-PQ, PQ, SQ, ...; see
:func:`faiss_is_lossy`) and the index has its vectors at hand (the builder's ``emb_*.npy`` segments, memory-mapped,
listed in ``dense.json``), :meth:`DenseIndex.search` asks faiss for ``k · rerank`` candidates, reads only those
rows from the segments (fp16 → float32), scores them exactly like :func:`exact_search` and keeps the best ``k``
(score descending, ties by lower index position). Search parameter ``rerank`` (an int factor, default
:data:`DEFAULT_RERANK` for lossy indexes; 0 turns it off).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from medret import optional
from medret.errors import ConfigError, IndexBuildError
from medret.index.exact import check_k, check_query, exact_search, is_tensor
from medret.index.faiss_ops import (
    NAMED_TYPES,
    apply_search_params,
    default_search_params,
    factory_string,
    faiss_is_lossy,
    flat_vectors,
    metric_of_faiss,
    new_faiss_index,
    read_faiss_index,
    train_faiss_index,
    write_faiss_index,
)
from medret.storage.atomic import atomic_path

logger = logging.getLogger(__name__)

DESCRIPTOR = "dense.json"
FAISS_FILE = "faiss.index"
ROW_MAP_FILE = "row_map.npy"
DEFAULT_RERANK = 10  # candidates = k * rerank for lossy faiss indexes with stored vectors
RERANK_BLOCK_BYTES = 32 << 20  # temporary (queries x candidates x dim) float32 block while re-ranking


def check_rerank(value: Any) -> int:
    """Validate the ``rerank`` search parameter: a non-negative int (0 = off)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ConfigError(
            f"rerank={value!r} is invalid: give a non-negative integer factor (faiss is asked for k * rerank "
            f"candidates, re-scored exactly from the stored vectors), e.g. rerank={DEFAULT_RERANK}, or rerank=0 to "
            "turn re-ranking off"
        )
    return int(value)


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

    ``rerank_vectors`` (faiss backend only, optional): the indexed vectors as consecutive segments (arrays or
    ``np.memmap`` of the ``.npy`` files, fp16 or fp32; row ``i`` of the concatenation is faiss position ``i``).
    With them, a lossy faiss index re-ranks ``k · rerank`` candidates exactly (module docstring).
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
        rerank_vectors: Sequence[Any] | None = None,
    ) -> None:
        if metric not in ("ip", "l2"):
            raise ConfigError(f"metric={metric!r} is invalid: use 'ip' or 'l2'")
        if (embeddings is None) == (faiss_index is None):
            raise ConfigError("DenseIndex needs exactly one of embeddings= (exact search) or faiss_index=")
        if rerank_vectors is not None and faiss_index is None:
            raise ConfigError("rerank_vectors= applies to faiss indexes only: an exact index already searches its "
                              "embeddings")
        if search_params and search_params.get("rerank") is not None:
            check_rerank(search_params["rerank"])
        self.metric = metric
        self.dim = int(dim)
        self.index_type = index_type
        self.faiss_index = faiss_index
        self.embeddings: list[Any] | None = list(embeddings) if embeddings is not None else None
        self.embedding_files = list(embedding_files) if embedding_files else None
        self.search_params = dict(search_params or {})
        self.chunk_rows = chunk_rows
        self.device = "cpu"
        self.rerank_vectors: list[Any] | None = None
        self.lossy = False
        # the file a memory-mapped faiss index was read from, and its (inode, size, mtime) then
        self._faiss_source: tuple[Path, tuple[int, int, int]] | None = None
        self._rerank_bounds: np.ndarray | None = None
        self._flat_owner = None
        flat = flat_vectors(faiss_index) if faiss_index is not None else None
        if flat is not None:
            # a plain flat faiss index (MedRAG's, or one written by faiss) is searched by the exact path over its
            # vectors in place: 3.2x faiss's own flat search on 2 CPU cores (512 x 200k x 768), and it can move
            # to a GPU or be sharded. The faiss object owns (or maps) that memory: keep it.
            if metric_of_faiss(faiss_index) != metric:
                raise IndexBuildError(f"the flat faiss index scores by {metric_of_faiss(faiss_index)!r}, not by "
                                      f"metric={metric!r}: open it with metric={metric_of_faiss(faiss_index)!r}")
            self._flat_owner, faiss_index, self.faiss_index = faiss_index, None, None
            self.embeddings = [flat]
        if faiss_index is not None:
            if int(faiss_index.d) != self.dim:
                raise IndexBuildError(f"faiss index dim={faiss_index.d} differs from dim={dim}")
            apply_search_params(faiss_index, self.search_params)
            self.ntotal = int(faiss_index.ntotal)
            self.lossy = faiss_is_lossy(faiss_index)
            if rerank_vectors is not None:
                self._attach_rerank_vectors(list(rerank_vectors))
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
                    f"row_map has {row_map.shape[0] if row_map.ndim else 0} entries but the index has {self.ntotal} "
                    "vectors"
                )
        self.row_map = row_map

    def _attach_rerank_vectors(self, segs: list[Any]) -> None:
        for i, e in enumerate(segs):
            if len(e.shape) != 2 or int(e.shape[1]) != self.dim:
                raise IndexBuildError(f"rerank_vectors[{i}].shape={tuple(e.shape)} is invalid: expected (rows, "
                                      f"{self.dim})")
        sizes = [int(e.shape[0]) for e in segs]
        if sum(sizes) != self.ntotal:
            raise IndexBuildError(
                f"the re-rank vectors hold {sum(sizes)} rows but the faiss index holds {self.ntotal} vectors: they "
                "come from different builds; rebuild the index"
            )
        self.rerank_vectors = segs
        # start position of each segment; global position p lies in segment searchsorted(bounds, p, 'right') - 1
        self._rerank_bounds = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)

    # ----------------------------------------------------------------- properties
    @property
    def backend(self) -> str:
        return "faiss" if self.faiss_index is not None else "exact"

    @property
    def rerank(self) -> int:
        """The candidate factor :meth:`search` uses: 0 when it does not re-rank.

        Only lossy faiss indexes with vectors attached re-rank: a lossless faiss index already scores with the
        full float32 vectors, and re-scoring from (possibly fp16) stored copies could only lose precision.
        """
        if self.faiss_index is None or self.rerank_vectors is None or not self.lossy:
            return 0
        r = self.search_params.get("rerank")
        return DEFAULT_RERANK if r is None else int(r)

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
        keep_vectors: bool | None = None,
    ) -> "DenseIndex":
        """Build an index from an in-memory (n, d) array.

        ``flat`` is the exact path over ``emb`` itself (no copy). ``keep_vectors`` (default:
        when the faiss index is lossy) keeps a reference to ``emb`` (no copy) as the re-rank vectors.
        """
        if not isinstance(index_type, str) or not index_type.strip():
            raise ConfigError(f"index_type={index_type!r} is invalid: use {', '.join(NAMED_TYPES)} or a faiss factory "
                              "string")
        emb = np.asarray(emb)
        if emb.ndim != 2 or emb.shape[0] == 0:
            raise ConfigError(f"emb.shape={emb.shape} is invalid: expected a non-empty (n, d) array")
        n, d = emb.shape
        factory = factory_string(index_type, d, n)
        if factory == "Flat":
            return cls(metric=metric, dim=d, index_type="flat", embeddings=[emb])
        index = new_faiss_index(d, metric, factory)
        train_faiss_index(index, lambda: iter([emb]), n, train_size=train_size, seed=seed)
        for s in range(0, n, 65536):
            index.add(np.ascontiguousarray(emb[s : s + 65536], dtype=np.float32))
        params = default_search_params(factory)
        params.update(search_params or {})
        if keep_vectors is None:
            keep_vectors = faiss_is_lossy(index)
        return cls(metric=metric, dim=d, index_type=index_type.strip() if factory != "Flat" else "flat",
                   faiss_index=index, search_params=params, rerank_vectors=[emb] if keep_vectors else None)

    # ----------------------------------------------------------------- searching
    def to(self, device: str, half: bool = False) -> "DenseIndex":
        """Make the exact backend's embeddings resident on ``device`` as one tensor, in fp16 if ``half``
        (else their dtype kept). On ``cpu`` the embeddings stay memory-mapped. faiss indexes stay on CPU.
        """
        if self.embeddings is None or str(device) == "cpu":
            self.device = "cpu" if self.embeddings is None else str(device)
            return self
        torch = optional.torch()
        first = self.embeddings[0]
        dt = first.dtype if is_tensor(first) else torch.from_numpy(np.zeros(0, dtype=first.dtype)).dtype
        if half:
            dt = torch.float16
        full = torch.empty((self.ntotal, self.dim), dtype=dt, device=device)
        off = 0
        for e in self.embeddings:
            rows = int(e.shape[0])
            for s in range(0, rows, 1 << 18):
                stop = min(rows, s + (1 << 18))
                part = e[s:stop] if is_tensor(e) else torch.from_numpy(np.ascontiguousarray(e[s:stop]))
                full[off + s : off + stop].copy_(part, non_blocking=False)
            off += rows
        self.embeddings = [full]
        self.device = str(device)
        logger.info("dense index: %d x %d %s embeddings resident on %s", self.ntotal, self.dim, dt, device)
        return self

    def search(self, qemb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k for each query: ``(scores float32 (n, k'), rows int64 (n, k'))``, higher score = better."""
        q = check_query(qemb, self.dim)
        k = check_k(k)
        kk = min(k, self.ntotal)
        if self.faiss_index is not None:
            rerank = self.rerank
            kc = min(kk * rerank, self.ntotal) if rerank else kk
            dist, rows = self.faiss_index.search(q, kc)
            rows = rows.astype(np.int64, copy=False)
            if rerank:
                scores, rows = self._rerank(q, rows, kk)
            else:
                scores = dist.astype(np.float32, copy=False)  # faiss hands back fresh arrays: no copy needed
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

    def _gather(self, positions: np.ndarray) -> np.ndarray:
        """float32 rows of the re-rank vectors at sorted unique global ``positions`` (one read per segment)."""
        assert self.rerank_vectors is not None and self._rerank_bounds is not None
        out = np.empty((positions.shape[0], self.dim), dtype=np.float32)
        bounds = self._rerank_bounds
        cuts = np.searchsorted(positions, bounds)  # positions[cuts[i]:cuts[i+1]] lie in segment i
        for i, seg in enumerate(self.rerank_vectors):
            a, b = int(cuts[i]), int(cuts[i + 1])
            if a < b:
                out[a:b] = np.asarray(seg[positions[a:b] - bounds[i]], dtype=np.float32)
        return out

    def _rerank(self, q: np.ndarray, cand: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact scores of faiss's candidates ``cand`` (n, kc; -1 = none) from the stored vectors, top ``kk``.

        Scores follow :func:`exact_search`'s convention in float32: ``q·x`` for ip, ``−‖q − x‖²`` for l2
        (computed from the difference, which is more accurate than the expansion ``2q·x − |x|² − |q|²`` that
        the exact backend's matmul needs). Order: score descending, ties by lower position; ``-1`` candidates
        stay ``-1`` with score ``-inf`` (last).
        """
        n, kc = cand.shape
        valid = cand >= 0
        scores = np.full((n, kc), -np.inf, dtype=np.float32)
        # blocks of queries: the gathered rows and the (b, kc, d) temporary stay under RERANK_BLOCK_BYTES each
        step = max(1, RERANK_BLOCK_BYTES // max(1, kc * self.dim * 4))
        for s in range(0, n, step):
            e = min(n, s + step)
            ok = valid[s:e]
            if not ok.any():
                continue
            uniq, inv = np.unique(cand[s:e][ok], return_inverse=True)  # each row read once, in file order
            vecs = self._gather(uniq)
            slot = np.zeros((e - s, kc), dtype=np.int64)
            slot[ok] = inv.reshape(-1)
            v = vecs[slot]  # (b, kc, d)
            if self.metric == "ip":
                block = np.matmul(v, q[s:e, :, None])[..., 0]
            else:  # -||q - x||², from the difference: no cancellation between |q|², |x|² and 2q·x
                v -= q[s:e, None, :]
                block = -np.einsum("bkd,bkd->bk", v, v)
            scores[s:e] = np.where(ok, block, np.float32(-np.inf))
        tie = np.where(valid, cand, np.iinfo(np.int64).max)
        order = np.lexsort((tie, -scores), axis=1)[:, :kk]  # last key first: score desc, then position asc
        return (np.take_along_axis(scores, order, 1).astype(np.float32, copy=False),
                np.take_along_axis(cand, order, 1))

    def set_search_params(self, **params: Any) -> None:
        """Update search parameters (``nprobe``, ``ef_search``, ``rerank``); ``None`` values are ignored.

        Invalid values raise :class:`ConfigError` and change nothing.
        """
        if params.get("rerank") is not None:
            check_rerank(params["rerank"])
            if params["rerank"] and self.faiss_index is not None and not self.lossy:
                logger.info("rerank=%s has no effect: the faiss index %s scores with full vectors",
                            params["rerank"], type(self.faiss_index).__name__)
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
        directory = Path(directory)
        with atomic_path(directory) as tmp:
            tmp.mkdir(parents=True)
            self.write_into(tmp)
        return directory

    def write_into(self, directory: Path, embedding_files: Sequence[str] | None = None) -> None:
        """Write the index files into an existing (temporary) directory; no rename.

        ``embedding_files``: the ``.npy`` segments (in row order) already written into ``directory`` by the
        caller; they are recorded in the descriptor instead of writing the vectors again — for a faiss index
        they are its re-rank vectors. Without them, the exact backend's embeddings (or a faiss index's re-rank
        vectors, if any) are written as ``emb_NNNNNN.npy``.
        """
        if self.faiss_index is not None:
            if self._faiss_source is not None:
                # read with IO_FLAG_MMAP, an IVF index's inverted lists point into its file; faiss.write_index
                # then writes a file that crashes the next search, so the original file is copied instead
                src, ident = self._faiss_source
                if _file_identity(src) != ident:
                    raise IndexBuildError(
                        f"cannot save this faiss index: {str(src)!r}, which it was memory-mapped from, was replaced "
                        "or changed since it was loaded; load the index again (DenseIndex.load) and save that"
                    )
                shutil.copyfile(src, directory / FAISS_FILE)
            else:
                write_faiss_index(self.faiss_index, directory / FAISS_FILE)
        if embedding_files is not None:
            self.embedding_files = list(embedding_files)
        else:
            segs = self.embeddings if self.faiss_index is None else self.rerank_vectors
            if segs is not None:
                files = []
                for i, e in enumerate(segs):
                    name = f"emb_{i:06d}.npy"
                    arr = e.cpu().numpy() if is_tensor(e) else np.asarray(e)
                    np.save(directory / name, arr, allow_pickle=False)
                    files.append(name)
                self.embedding_files = files
            elif self.faiss_index is not None:
                self.embedding_files = None
        if self.row_map is not None:
            np.save(directory / ROW_MAP_FILE, self.row_map, allow_pickle=False)
        (directory / DESCRIPTOR).write_text(json.dumps(self.descriptor(), indent=2))

    @classmethod
    def load(cls, directory: str | os.PathLike[str], mmap: bool = True, **search_params: Any) -> "DenseIndex":
        """Load an index saved by :meth:`save` (or by the index builder). Embeddings are memory-mapped."""
        directory = Path(directory)
        desc_path = directory / DESCRIPTOR
        if not desc_path.is_file():
            raise IndexBuildError(f"no dense index at {str(directory)!r}: {DESCRIPTOR} is missing; build the index "
                                  "first")
        try:
            desc = json.loads(desc_path.read_text())
        except (OSError, ValueError) as e:
            raise IndexBuildError(f"{str(desc_path)!r} is damaged ({e}); rebuild the index") from e
        row_map = None
        if desc.get("row_map_file"):
            row_map = np.load(directory / desc["row_map_file"], mmap_mode="r" if mmap else None)
        params = dict(desc.get("search_params") or {})
        params.update({k: v for k, v in search_params.items() if v is not None})
        if params.get("rerank") is not None:
            check_rerank(params["rerank"])
        files = desc.get("embedding_files") or []
        embs = []
        for f in files:
            p = directory / f
            try:
                embs.append(np.load(p, mmap_mode="r" if mmap else None, allow_pickle=False))
            except (OSError, ValueError) as e:
                raise IndexBuildError(f"embedding file {str(p)!r} cannot be read ({e}); rebuild the index") from e
        if desc["backend"] == "faiss":
            # descriptors written before re-rank support list no embedding files: such indexes load without it
            index = read_faiss_index(directory / desc["faiss_file"], mmap=mmap)
            loaded = cls(metric=desc["metric"], dim=desc["dim"], index_type=desc["index_type"], faiss_index=index,
                         row_map=row_map, search_params=params, rerank_vectors=embs or None,
                         embedding_files=files or None)
            src = directory / desc["faiss_file"]
            ident = _file_identity(src)
            if mmap and ident is not None:
                loaded._faiss_source = (src, ident)
            return loaded
        index = cls(metric=desc["metric"], dim=desc["dim"], index_type=desc["index_type"], embeddings=embs,
                    row_map=row_map, search_params=params, embedding_files=files)
        if index.ntotal != int(desc["ntotal"]):
            raise IndexBuildError(
                f"dense index at {str(directory)!r} holds {index.ntotal} vectors but its descriptor says "
                f"{desc['ntotal']}; rebuild it"
            )
        return index


def _file_identity(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)
