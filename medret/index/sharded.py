"""A dense index split by rows over several workers (Ray actors on GPUs or nodes), searched exactly.

Each shard holds a contiguous row slice ``[start, end)`` of the embeddings. A search scatters the query
embeddings to every shard, each returns its own top-k as ``(scores, global rows)``, and
:func:`merge_shard_results` merges them. The order rule everywhere is **score descending, then row
ascending**, so the result equals the unsharded exact search, ties included:

* scores are computed in fixed blocks of ``block`` rows aligned on *global* row numbers, and shard boundaries
  fall on block boundaries (:func:`plan_shards`), so every score is computed by the same kernel call on the
  same operands whether the index is sharded or not -- bit-identical, not merely close;
* a shard's local top-k keeps, at its k-th place, the lowest rows among equal scores (candidates include
  every score tied with the k-th), which is exactly what the global rule needs from it.

This is how an index larger than one GPU (MedCorp's flat MedCPT index: 166 GB fp32, 83 GB fp16) is served
from several smaller GPUs.
"""
from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

import numpy as np

from medret import optional
from medret.device import resolve_device
from medret.errors import ConfigError, IndexBuildError
from medret.index.dense import map_rows
from medret.validate import check_whole

logger = logging.getLogger(__name__)

DEFAULT_BLOCK = 16384


# ===================================================================================== pure functions


def plan_shards(n_rows: int, n_shards: int, block: int = DEFAULT_BLOCK) -> list[tuple[int, int]]:
    """Split ``[0, n_rows)`` into at most ``n_shards`` contiguous ranges whose boundaries are multiples of
    ``block`` (balanced in whole blocks). Fewer ranges come back when there are fewer blocks than shards."""
    for name, v in (("n_rows", n_rows), ("n_shards", n_shards), ("block", block)):
        check_whole(name, v)
    n_blocks = -(-n_rows // block)
    s = min(n_shards, n_blocks)
    base, extra = divmod(n_blocks, s)
    out, b = [], 0
    for i in range(s):
        nb = base + (1 if i < extra else 0)
        out.append((b * block, min(n_rows, (b + nb) * block)))
        b += nb
    return out


def topk_rows(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per query, the k best candidates by (score descending, row ascending). Padding (row -1, score -inf)
    sorts last. Shapes (n, m) -> (n, min(k, m))."""
    scores = np.asarray(scores, dtype=np.float32)
    rows = np.asarray(rows, dtype=np.int64)
    if scores.shape != rows.shape or scores.ndim != 2:
        raise ConfigError(f"scores{scores.shape} and rows{rows.shape} must be two arrays of the same (n, m) shape")
    # padding sorts after every real candidate, even a real -inf score (l2 never gives -inf; ip can't)
    pad = rows < 0
    order = np.lexsort((np.where(pad, np.iinfo(np.int64).max, rows), -scores, pad), axis=-1)[:, :k]
    return np.take_along_axis(scores, order, 1), np.take_along_axis(rows, order, 1)


def merge_shard_results(results: Sequence[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge the shards' ``(scores, global rows)`` into the global top-k: exact, by (score desc, row asc).

    The width is ``min(k, total candidates)``, which equals ``min(k, ntotal)`` when each shard returned
    ``min(k, its rows)`` candidates -- the width of the unsharded search."""
    check_whole("k", k)
    results = [(np.asarray(s, np.float32), np.asarray(r, np.int64)) for s, r in results]
    if not results:
        raise ConfigError("results=[] is invalid: no shard answered")
    n = results[0][0].shape[0]
    for s, r in results:
        if s.shape[0] != n or r.shape != s.shape:
            raise ConfigError("shard results disagree on the number of queries or on their shapes")
    scores = np.concatenate([s for s, _ in results], axis=1)
    rows = np.concatenate([r for _, r in results], axis=1)
    return topk_rows(scores, rows, int(k))


def score_block(q: Any, x: Any, metric: str = "ip") -> Any:
    """Scores of queries ``q`` (n, d) against rows ``x`` (b, d): ``q·x`` or ``-||q-x||²`` (torch tensors)."""
    s = (q @ x.T).float()
    if metric == "l2":
        xf = x.float()
        qf = q.float()
        s = 2.0 * s - (xf * xf).sum(dim=1)[None, :] - (qf * qf).sum(dim=1, keepdim=True)
    return s


def _lex_topk_torch(scores: Any, rows: Any, k: int) -> tuple[Any, Any]:
    """(score desc, row asc) top-k with torch: two stable sorts make a lexicographic sort."""
    torch = optional.torch

    r_sorted, idx = torch.sort(rows, dim=1, stable=True)
    s_by_row = torch.gather(scores, 1, idx)
    s_sorted, idx2 = torch.sort(s_by_row, dim=1, descending=True, stable=True)
    r_final = torch.gather(r_sorted, 1, idx2)
    return s_sorted[:, :k], r_final[:, :k]


def exact_topk_slice(emb: Any, qemb: np.ndarray, k: int, start: int = 0, metric: str = "ip",
                     block: int = DEFAULT_BLOCK, device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of ``qemb`` over ``emb`` (the rows ``[start, start + len(emb))`` of a larger index), rows
    returned as global row numbers. ``start`` must be a multiple of ``block`` so the score blocks line up
    with the unsharded ones. ``emb``: numpy array (memory-mapped is fine) or torch tensor on ``device``."""
    torch = optional.torch

    if start % block:
        raise ConfigError(f"start={start} is invalid: shard starts must be multiples of block={block}")
    if metric not in ("ip", "l2"):
        raise ConfigError(f"metric={metric!r} is invalid: use 'ip' or 'l2'")
    q = np.ascontiguousarray(np.atleast_2d(np.asarray(qemb, dtype=np.float32)))
    n_rows, dim = int(emb.shape[0]), int(emb.shape[1])
    if q.shape[1] != dim:
        raise ConfigError(f"qemb.shape={q.shape} is invalid: expected (n_queries, {dim})")
    n = q.shape[0]
    kk = min(int(k), n_rows)
    dev = torch.device(device)
    if n == 0 or kk == 0:
        return np.zeros((n, kk), np.float32), np.zeros((n, kk), np.int64)
    is_tensor = isinstance(emb, torch.Tensor)
    dt = emb.dtype if is_tensor else torch.from_numpy(np.zeros(0, dtype=emb.dtype)).dtype
    cdtype = dt if (dev.type == "cuda" and dt in (torch.float16, torch.bfloat16)) else torch.float32
    qt = torch.from_numpy(q).to(dev)
    qc = qt.to(cdtype)
    # every tensor reaches the device through .to(): one way onto it (what a device spy watches in the tests)
    best_s = torch.full((n, 0), float("-inf"), dtype=torch.float32).to(dev)
    best_r = torch.full((n, 0), -1, dtype=torch.int64).to(dev)
    with torch.inference_mode():
        for s in range(0, n_rows, block):
            e = min(n_rows, s + block)
            if is_tensor:
                x = emb[s:e].to(device=dev, dtype=cdtype)
            else:
                x = torch.from_numpy(np.ascontiguousarray(emb[s:e])).to(dev).to(cdtype)
            sc = score_block(qc, x, metric)
            kb = min(kk, e - s)
            ts, _ = torch.topk(sc, kb, dim=1)
            # every score tied with each query's kb-th best is a candidate, so the lowest rows among ties survive
            need = int((sc >= ts[:, -1:]).sum(dim=1).max().item())
            cs, ci = torch.topk(sc, need, dim=1)
            cand_r = ci + (start + s)
            best_s, best_r = _lex_topk_torch(torch.cat([best_s, cs], 1), torch.cat([best_r, cand_r], 1), kk)
    return best_s.cpu().numpy().astype(np.float32), best_r.cpu().numpy().astype(np.int64)


# ===================================================================================== shard workers


class DenseShard:
    """One row slice ``[start, end)`` of an exact index, on one device: a worker of a :class:`ShardHost` (an object
    in this process, or a Ray actor). It resolves ``device`` in its own process (where its GPUs are visible) and
    maps only its own rows when given the index's ``.npy`` segment files."""

    def __init__(self, start: int, end: int, metric: str = "ip", block: int = DEFAULT_BLOCK, device: str = "cpu",
                 embeddings: Any = None, npy_files: Sequence[str] | None = None, allow_cpu_fallback: bool = False):
        self.start, self.end, self.metric, self.block = int(start), int(end), metric, block
        self.device = resolve_device(device, None, allow_cpu_fallback)
        self.source = "array" if embeddings is not None else "npy"
        if embeddings is None:
            if not npy_files:
                raise ConfigError("a shard needs embeddings= or npy_files=")
            embeddings = _slice_of_segments([np.load(f, mmap_mode="r") for f in npy_files], self.start, self.end)
        else:
            embeddings = np.asarray(embeddings)
        if int(embeddings.shape[0]) != self.end - self.start:
            raise IndexBuildError(f"shard [{start}, {end}) got {embeddings.shape[0]} rows")
        self.emb = embeddings
        if self.device != "cpu":
            self.emb = optional.torch.from_numpy(np.ascontiguousarray(embeddings)).to(self.device)
        logger.info("dense shard [%d, %d) ready on %s", self.start, self.end, self.device)

    def search(self, qemb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return exact_topk_slice(self.emb, qemb, k, self.start, self.metric, self.block, self.device)

    def describe(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "device": self.device, "source": self.source,
                "pid": os.getpid(), "hostname": socket.gethostname()}


def _slice_of_segments(segments: Sequence[Any], start: int, end: int) -> np.ndarray:
    """Rows [start, end) across consecutive segments (row numbers run on from one to the next)."""
    parts, off = [], 0
    for seg in segments:
        n = int(seg.shape[0])
        a, b = max(start, off), min(end, off + n)
        if a < b:
            parts.append(np.asarray(seg[a - off:b - off]))
        off += n
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)


class ShardHost(Protocol):
    """Where the workers of a sharded index live: this process (:class:`LocalShardHost`) or Ray actors
    (:class:`medret.transports.ray.RayShardHost`). ``start`` gets one :class:`DenseShard` keyword set per shard
    (the host may set ``device``: which GPU each shard takes is the host's business)."""

    def start(self, shards: list[dict[str, Any]]) -> list[Any]: ...

    def call(self, workers: list[Any], method: str, *args: Any) -> list[Any]: ...

    def close(self, workers: list[Any]) -> None: ...


class LocalShardHost:
    """Shards as :class:`DenseShard` objects in this process, all on ``device`` (None: as each shard was asked)."""

    def __init__(self, device: str | None = None):
        self.device = device

    def start(self, shards: list[dict[str, Any]]) -> list[Any]:
        return [DenseShard(**({**kw, "device": self.device} if self.device else kw)) for kw in shards]

    def call(self, workers: list[Any], method: str, *args: Any) -> list[Any]:
        return [getattr(w, method)(*args) for w in workers]

    def close(self, workers: list[Any]) -> None:
        return None


@dataclass
class ShardedDenseIndex:
    """Search interface of :class:`medret.index.dense.DenseIndex` over shard workers.

    ``shards`` are the workers of ``host`` (by default :class:`DenseShard` objects in this process), ``ranges``
    their row slices in order. ``row_map`` (optional) maps index positions to store rows after the merge.
    """

    shards: list[Any]
    ranges: list[tuple[int, int]]
    dim: int
    metric: str = "ip"
    row_map: np.ndarray | None = None
    host: ShardHost = field(default_factory=LocalShardHost)
    index_type: str = "flat-sharded"

    def __post_init__(self) -> None:
        prev = 0
        for a, b in self.ranges:
            if a != prev or b <= a:
                raise ConfigError(f"shard ranges {self.ranges} must be contiguous, non-empty and start at 0")
            prev = b
        self.ntotal = prev
        self.device = "sharded"

    def search(self, qemb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(np.atleast_2d(np.asarray(qemb, dtype=np.float32)))
        if q.shape[1] != self.dim:
            raise ConfigError(f"qemb.shape={q.shape} is invalid: expected (n_queries, {self.dim})")
        check_whole("k", k)
        scores, rows = merge_shard_results(self.host.call(self.shards, "search", q, int(k)), int(k))
        return scores, map_rows(rows, self.row_map)

    def describe(self) -> list[dict[str, Any]]:
        return self.host.call(self.shards, "describe")

    def close(self) -> None:
        self.host.close(self.shards)
        self.shards = []


def shard_embeddings(embeddings: np.ndarray | None, n_shards: int, host: ShardHost, *, metric: str = "ip",
                     block: int | None = None, row_map: np.ndarray | None = None, ntotal: int | None = None,
                     dim: int | None = None, npy_files: Sequence[str] | None = None, device: str = "cpu",
                     allow_cpu_fallback: bool = False) -> ShardedDenseIndex:
    """Start ``n_shards`` workers on ``host`` over ``embeddings`` (each gets its rows), or over the ``.npy``
    segment files of a checked index (``npy_files`` with ``ntotal``/``dim``: each worker maps only its rows).
    ``block``: default :data:`DEFAULT_BLOCK`, made small enough that every shard gets rows."""
    if embeddings is not None:
        ntotal, dim = int(embeddings.shape[0]), int(embeddings.shape[1])
    if ntotal is None or dim is None:
        raise ConfigError("shard_embeddings needs embeddings= or npy_files= with ntotal= and dim=")
    if block is None:
        block = max(1, min(DEFAULT_BLOCK, -(-ntotal // n_shards)))
    ranges = plan_shards(ntotal, n_shards, block)
    specs = [dict(start=a, end=b, metric=metric, block=block, device=device, allow_cpu_fallback=allow_cpu_fallback,
                  embeddings=None if embeddings is None else np.ascontiguousarray(embeddings[a:b]),
                  npy_files=None if embeddings is not None else list(npy_files or []))
             for a, b in ranges]
    workers = host.start(specs)
    return ShardedDenseIndex(workers, ranges, dim, metric, None if row_map is None else np.asarray(row_map), host)


def shard_index(ix: Any, n_shards: int, host: ShardHost, *, device: str = "cpu",
                allow_cpu_fallback: bool = False) -> ShardedDenseIndex:
    """Split a loaded exact index (opened, and so checked, by :func:`medret.index.dense_build.load_dense_index` or the
    MedRAG reader) over ``n_shards`` workers of ``host``: each maps its own rows of memory-mapped ``.npy`` segments;
    anything else (a flat faiss file's vectors) is handed to the workers as arrays."""
    if getattr(ix, "embeddings", None) is None:
        raise ConfigError(f"ray_shards={n_shards} needs exact (flat) dense indexes, but one is "
                          f"{getattr(ix, 'index_type', '?')}; rebuild with --index-type flat or use ray_shards=1")
    files = [getattr(e, "filename", None) for e in ix.embeddings]
    common = dict(metric=ix.metric, row_map=ix.row_map, device=device, allow_cpu_fallback=allow_cpu_fallback)
    if all(f and str(f).endswith(".npy") for f in files):
        return shard_embeddings(None, n_shards, host, ntotal=sum(int(e.shape[0]) for e in ix.embeddings),
                                dim=ix.dim, npy_files=[str(f) for f in files], **common)
    # one segment (e.g. a flat faiss file's vectors, in place) is handed on without a copy
    emb = (np.asarray(ix.embeddings[0]) if len(ix.embeddings) == 1
           else np.concatenate([np.asarray(e) for e in ix.embeddings], axis=0))
    return shard_embeddings(emb, n_shards, host, **common)
