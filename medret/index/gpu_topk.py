"""Exact top-k over a resident embedding matrix with a selection that does not dominate the matmul.

The straightforward exact search (chunked ``q @ X.T`` then ``torch.topk`` over every score) spends most of its
time in the selection: ``topk`` over a (512 × 1M) fp16 block is slower than the matmul that produced it. This
module selects by **block maxima** instead, and stays exact:

1. per chunk of rows, ``S = q @ X_chunk.T`` in the compute dtype (fp16/bf16 tensor cores on CUDA);
2. view ``S`` as (n, blocks, B) and take each block's maximum (one cheap reduction);
3. keep the ``k'`` best blocks per query; the k' best scores of the chunk lie inside them (below);
4. take the exact top-k' inside those ``k'·B`` candidates and merge with the running top-k' across chunks;
5. optionally rescore the final ``k'`` candidates in float32 from the stored vectors and keep the best ``k``.

Why step 3 is exact, ties included: order entries by (score descending, row ascending) and blocks by (block
maximum descending, block index ascending). If an entry ``e`` lies in a block that is not among the ``k'`` first
blocks, each of those ``k'`` blocks holds an entry that precedes ``e`` in that order (its maximum is larger, or
equal and at a lower row), so ``e`` is not among the first ``k'`` entries. Both orders are made strict and
deterministic with 64-bit keys ``(order-preserving integer of the score) · 2³² + (2³² − 1 − index)``, so
``torch.topk`` on the keys gives exactly the lowest-row-first order that :mod:`medret.index.select` uses.

Temporary memory is bounded by ``chunk_rows`` (from ``max_temp_bytes``): one (n × chunk_rows) score block plus
(n × chunk_rows / B) keys. Scores are "higher is better": the inner product for ``metric='ip'`` and the negative
squared distance for ``metric='l2'``, as in :mod:`medret.index.dense`.
This module imports nothing of medret's index package but the error and validation helpers: the dense index
(:mod:`medret.index.exact`) calls it, never the other way round.

Returned tensors live on the compute device: ``scores`` float32 (n, k'), ``rows`` int64 (n, k'), k' = min(k, N).
How :func:`medret.index.exact.exact_search` uses it: ``s, r = exact_topk(full_tensor, torch.from_numpy(q)
.to(dev), k, metric=self.metric)`` then ``s.cpu().numpy(), r.cpu().numpy()``.

A fused (Triton) epilogue that computes the block maxima inside the matmul would remove the write and re-read of
``S``; it is not included because it cannot be tested on the CPU-only CI here.
"""
from __future__ import annotations

import logging
import math
import warnings
from typing import Any, Sequence

import numpy as np
import torch

from medret.errors import ConfigError
from medret.validate import check_whole

log = logging.getLogger(__name__)

LOW32 = (1 << 32) - 1
MAX_ROWS = 1 << 32
DEFAULT_BLOCK_ROWS = 128
# bounded temporary memory of an exact search (max_temp_bytes): one score block plus its keys
DEFAULT_TEMP_BYTES = 512 << 20
METHODS = ("blockmax", "naive")
_INT_VIEW = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32,
             torch.float64: torch.int64}


def ordered_int(x: torch.Tensor) -> torch.Tensor:
    """An int64 tensor ordered like the floats of ``x`` (−0.0 == +0.0; NaN is not supported)."""
    x = x + 0.0  # −0.0 → +0.0
    itype = _INT_VIEW.get(x.dtype)
    if itype is None:
        raise ConfigError(f"scores dtype={x.dtype} is not supported: use float16, bfloat16 or float32")
    bits = x.view(itype).to(torch.int64)
    mag = (1 << (torch.iinfo(itype).bits - 1)) - 1
    # negative floats: flip the magnitude bits so larger magnitude sorts lower
    return torch.where(bits < 0, bits ^ mag, bits)


def keys_of(scores: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """64-bit keys ordered by (score descending, index ascending) when taken largest first."""
    if scores.dtype == torch.float64:
        raise ConfigError("float64 scores cannot be packed into 64-bit keys: pass float32 or lower")
    return ordered_int(scores) * (1 << 32) + (LOW32 - index)


def key_index(keys: torch.Tensor) -> torch.Tensor:
    """The index packed into keys by :func:`keys_of`."""
    return LOW32 - (keys & LOW32)


def auto_chunk_rows(n_queries: int, block_rows: int, itemsize: int, max_temp_bytes: int = DEFAULT_TEMP_BYTES) -> int:
    """Rows per chunk so the (n × chunk) score block (plus an fp32 copy on CPU) stays near ``max_temp_bytes``."""
    per_row = max(n_queries, 1) * (itemsize + 8 / block_rows) + 4 * 2
    rows = int(max_temp_bytes // per_row)
    rows = max(block_rows, min(rows, 1 << 22))
    return rows // block_rows * block_rows


def _to_tensor(seg: Any, s: int, e: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(seg, torch.Tensor):
        return seg[s:e].to(device=device, dtype=dtype, non_blocking=True)


    with warnings.catch_warnings():  # read-only memmap slices: torch warns, but the tensor is only read
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(np.ascontiguousarray(seg[s:e])).to(device=device).to(dtype)


def exact_topk(
    emb: torch.Tensor | Any | Sequence[Any],
    q: torch.Tensor | Any,
    k: int,
    chunk_rows: int | None = None,
    *,
    block_rows: int = DEFAULT_BLOCK_ROWS,
    method: str = "blockmax",
    metric: str = "ip",
    compute_dtype: torch.dtype | None = None,
    rescore: bool | None = None,
    oversample: int | None = None,
    max_temp_bytes: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k of ``q @ emb.T`` per query (see the module docstring).

    ``emb``: (N, d) tensor on the search device (fp16/bf16/fp32), a numpy array / memmap, or a list of such
    segments whose rows are numbered consecutively. ``q``: (n, d) or (d,). ``compute_dtype``: the matmul dtype;
    default the embeddings' dtype on CUDA, float32 on CPU. ``rescore`` (default: when the compute dtype is not
    float32) recomputes the kept candidates' scores in float32 from the stored vectors and reorders them, so
    returned scores and order are those of float32 arithmetic on the stored vectors; ``oversample`` extra
    candidates (default ``max(k, 8)`` when rescoring) are kept for it. ``max_temp_bytes`` (default
    :data:`DEFAULT_TEMP_BYTES`) sizes ``chunk_rows`` when it is not given. ``method='naive'`` runs ``topk`` over every
    score instead (for comparison; same result).
    """
    segs: list[Any] = [emb] if isinstance(emb, torch.Tensor) or hasattr(emb, "shape") else list(emb)
    if not segs:
        raise ConfigError("emb=[] is invalid: no embeddings to search")
    if method not in METHODS:
        raise ConfigError(f"method={method!r} is invalid: use one of {', '.join(METHODS)}")
    if metric not in ("ip", "l2"):
        raise ConfigError(f"metric={metric!r} is invalid: use 'ip' or 'l2'")
    check_whole("k", k)
    check_whole("block_rows", block_rows)
    dim = int(segs[0].shape[1])
    for i, sg in enumerate(segs):
        if len(sg.shape) != 2 or int(sg.shape[1]) != dim:
            raise ConfigError(f"emb segment {i} has shape {tuple(sg.shape)}: every segment must be (rows, {dim})")
    total = sum(int(sg.shape[0]) for sg in segs)
    if total >= MAX_ROWS:
        raise ConfigError(f"emb has {total} rows: at most {MAX_ROWS - 1} rows are supported")
    first = segs[0]
    device = first.device if isinstance(first, torch.Tensor) else (q.device if isinstance(q, torch.Tensor)
                                                                    else torch.device("cpu"))
    qt = q if isinstance(q, torch.Tensor) else torch.as_tensor(q)
    if qt.dim() == 1:
        qt = qt[None, :]
    if qt.dim() != 2 or int(qt.shape[1]) != dim:
        raise ConfigError(f"q.shape={tuple(qt.shape)} is invalid: expected (n_queries, {dim})")
    qf = qt.to(device=device, dtype=torch.float32)
    n = int(qf.shape[0])
    kk = min(k, total)
    if n == 0:
        return torch.zeros((0, kk), dtype=torch.float32, device=device), torch.zeros((0, kk), dtype=torch.int64,
                                                                                      device=device)
    if compute_dtype is None:
        sd = first.dtype if isinstance(first, torch.Tensor) else _torch_dtype(first.dtype)
        compute_dtype = sd if device.type == "cuda" and sd in (torch.float16, torch.bfloat16) else torch.float32
    if compute_dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ConfigError(f"compute_dtype={compute_dtype} is invalid: use torch.float16, torch.bfloat16 or float32")
    if rescore is None:
        rescore = compute_dtype != torch.float32
    if oversample is None:
        oversample = max(k, 8) if rescore else 0
    kc = min(kk + max(0, int(oversample)), total)  # candidates kept per query
    itemsize = torch.finfo(compute_dtype).bits // 8
    if chunk_rows is None:
        chunk_rows = auto_chunk_rows(n, block_rows, itemsize + (4 if device.type == "cpu" else 0),
                                     DEFAULT_TEMP_BYTES if max_temp_bytes is None else max_temp_bytes)
    else:
        check_whole("chunk_rows", chunk_rows, "rows scored at once")
    if method == "blockmax":
        chunk_rows = max(block_rows, chunk_rows // block_rows * block_rows)

    log.debug("exact_topk: %d queries over %d rows, %s, chunk_rows=%d, block_rows=%d, candidates=%d",
              n, total, compute_dtype, chunk_rows, block_rows, kc)
    qc = qf.to(compute_dtype)
    q_sq = (qf * qf).sum(1, keepdim=True) if metric == "l2" else torch.zeros(())  # used with l2 only
    best = torch.full((n, kc), torch.iinfo(torch.int64).min, dtype=torch.int64, device=device)
    offset = 0
    with torch.inference_mode():
        for seg in segs:
            rows = int(seg.shape[0])
            for s in range(0, rows, chunk_rows):
                e = min(rows, s + chunk_rows)
                x = _to_tensor(seg, s, e, device, compute_dtype)
                scores = qc @ x.T
                if metric == "l2":
                    xf = x.float()
                    scores = 2.0 * scores.float() - (xf * xf).sum(1)[None, :] - q_sq
                if method == "naive":
                    cand = _naive_chunk(scores, kc, offset + s)
                else:
                    cand = _blockmax_chunk(scores, kc, block_rows, offset + s)
                best = torch.topk(torch.cat([best, cand], dim=1), kc, dim=1, sorted=True).values
            offset += rows
        rows_out = key_index(best)
        if rescore:
            vecs = _gather_rows(segs, rows_out, device)
            sc = torch.einsum("nd,nkd->nk", qf, vecs)
            if metric == "l2":
                sc = 2.0 * sc - (vecs * vecs).sum(-1) - q_sq
            final = torch.topk(keys_of(sc.float().contiguous(), rows_out), kk, dim=1, sorted=True).values
            return _decode(final, torch.float32), key_index(final)
        sdtype = torch.float32 if metric == "l2" else compute_dtype
        return _decode(best[:, :kk], sdtype).float(), rows_out[:, :kk]


def _naive_chunk(scores: torch.Tensor, kc: int, row0: int) -> torch.Tensor:
    n, c = scores.shape
    idx = torch.arange(row0, row0 + c, device=scores.device).expand(n, c)
    keys = keys_of(scores, idx)
    return torch.topk(keys, min(kc, c), dim=1, sorted=False).values


def _blockmax_chunk(scores: torch.Tensor, kc: int, block_rows: int, row0: int) -> torch.Tensor:
    n, c = scores.shape
    nb = math.ceil(c / block_rows)
    pad = nb * block_rows - c
    if pad:
        scores = torch.nn.functional.pad(scores, (0, pad), value=float("-inf"))
    blocks = scores.view(n, nb, block_rows)
    bmax = blocks.amax(dim=2)
    kb = min(kc, nb)
    bidx = torch.arange(nb, device=scores.device).expand(n, nb)
    top_blocks = key_index(torch.topk(keys_of(bmax, bidx), kb, dim=1, sorted=False).values)  # (n, kb)
    cand = torch.gather(blocks, 1, top_blocks[:, :, None].expand(n, kb, block_rows))  # (n, kb, B)
    local = top_blocks[:, :, None] * block_rows + torch.arange(block_rows, device=scores.device)
    keys = keys_of(cand, local + row0)
    if pad:  # padded slots never win: lowest possible key
        keys = torch.where(local < c, keys, torch.iinfo(torch.int64).min)
    keys = keys.reshape(n, kb * block_rows)
    return torch.topk(keys, min(kc, keys.shape[1]), dim=1, sorted=False).values


def _decode(keys: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Scores back from :func:`keys_of` keys (inverse of :func:`ordered_int`)."""
    itype = _INT_VIEW[dtype]
    mag = (1 << (torch.iinfo(itype).bits - 1)) - 1
    o = keys >> 32  # arithmetic shift: the ordered integer
    bits = torch.where(o < 0, o ^ mag, o)
    return bits.to(itype).view(dtype)


def _gather_rows(segs: list[Any], rows: torch.Tensor, device: torch.device) -> torch.Tensor:
    """float32 vectors of global ``rows`` (n, kc) from the segments."""
    n, kc = rows.shape
    flat = rows.reshape(-1)
    dim = int(segs[0].shape[1])
    out = torch.empty((flat.numel(), dim), dtype=torch.float32, device=device)
    start = 0
    for seg in segs:
        m = int(seg.shape[0])
        sel = ((flat >= start) & (flat < start + m)).nonzero().squeeze(1)
        if sel.numel():
            local = flat[sel] - start
            if isinstance(seg, torch.Tensor):
                out[sel] = seg[local.to(seg.device)].to(device=device, dtype=torch.float32)
            else:
                li = local.cpu().numpy()
                order = np.argsort(li)
                vals = np.asarray(seg[li[order]], dtype=np.float32)
                inv = np.empty_like(order)
                inv[order] = np.arange(len(order))
                out[sel] = torch.from_numpy(vals[inv]).to(device)
        start += m
    return out.view(n, kc, dim)


def _torch_dtype(np_dtype: Any) -> torch.dtype:
    return {np.dtype("float16"): torch.float16, np.dtype("float32"): torch.float32,
            np.dtype("float64"): torch.float64}.get(np.dtype(np_dtype), torch.float32)
