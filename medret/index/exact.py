"""The exact search path of a dense index: every stored vector scored, top-k kept (bounded temporary memory).

Score convention as in :mod:`medret.index.dense` (higher is better: ``q·x`` for ``ip``, ``-||q - x||²`` for
``l2``). The search itself is :func:`medret.index.gpu_topk.exact_topk`, a torch module (the dense extra) loaded
on use; this module only shapes its inputs and outputs as numpy arrays.
"""
from __future__ import annotations

from typing import Any, Sequence, Union

import numpy as np

from medret import optional
from medret.errors import ConfigError
from medret.validate import check_whole

Embeddings = Union[np.ndarray, Sequence[np.ndarray]]


def segments(emb: Any) -> list[Any]:
    if isinstance(emb, np.ndarray) or is_tensor(emb):
        return [emb]
    segs = list(emb)
    return segs


def is_tensor(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "dim")


def check_query(qemb: Any, dim: int) -> np.ndarray:
    q = np.asarray(qemb)
    if q.ndim == 1:
        q = q[None, :]
    if q.ndim != 2 or q.shape[1] != dim:
        raise ConfigError(f"qemb.shape={tuple(np.shape(qemb))} is invalid: expected (n_queries, {dim})")
    return np.ascontiguousarray(q, dtype=np.float32)


def check_k(k: Any) -> int:
    check_whole("k", k)
    return int(k)


def exact_search(
    emb: Embeddings | Any,
    qemb: np.ndarray,
    k: int,
    metric: str = "ip",
    chunk_rows: int | None = None,
    device: str | None = None,
    max_temp_bytes: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k over ``emb`` (see the module docstring for the score convention), as numpy arrays.

    ``emb`` is an array (possibly a ``np.memmap``, fp16 or fp32), a list of such segments (row numbers run
    across them in order), or a torch tensor / list of tensors already on ``device``. The search itself is
    :func:`medret.index.gpu_topk.exact_topk` (chunked matmul with block-max selection, bounded temporary memory;
    fp16 tensor cores on CUDA with an fp32 rescore, float32 on CPU); ``max_temp_bytes`` bounds its temporary
    memory (default :data:`medret.index.gpu_topk.DEFAULT_TEMP_BYTES`).
    """
    torch = optional.torch()
    from medret.index.gpu_topk import exact_topk  # noqa: PLC0415 - a torch module (the dense extra): loaded on use

    segs = segments(emb)
    if not segs:
        raise ConfigError("emb=[] is invalid: no embeddings to search")
    q = check_query(qemb, int(segs[0].shape[1]))
    k = check_k(k)
    if device is None:
        device = str(segs[0].device) if is_tensor(segs[0]) else "cpu"
    scores, rows = exact_topk(segs, torch.from_numpy(q).to(device), k, chunk_rows, metric=metric,
                              max_temp_bytes=max_temp_bytes)
    return scores.cpu().numpy().astype(np.float32, copy=False), rows.cpu().numpy().astype(np.int64, copy=False)

