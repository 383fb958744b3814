"""Damaged embeddings: per-file sha256 of a dense index's ``emb_*.npy``, and cheap checks of the vectors at open.

Where each check runs, and why (MedCorp: 54M x 768 fp16 = 83 GB in 5,420 files of 10,000 rows):

* **build**: the encoder's output is checked finite before it is written; each file's sha256 is computed while it
  is written (no second read) and kept beside it in the partial folder (``emb_NNNNNN.npy.sha256``), then listed
  in the manifest under ``emb_sha256``.
* **resume**: every file already written is hashed again and compared with its checksum; one that differs
  (zeroed, NaN-filled, torn) is encoded again. A file without a checksum (a build killed between the two writes,
  or a partial folder of an older medret) is kept only if all its vectors are finite and non-zero.
* **open**: reading 83 GB at every start would take minutes (longer on network file systems), so while the
  vectors stay memory-mapped (CPU) the first, middle and last vector of every file are checked (finite, not all
  zero): a file zeroed or NaN-filled as a whole is refused, for about two page reads per file. When the index is
  moved to a GPU every byte is read anyway, and every vector is checked there, in blocks on the GPU.
* **medret doctor** compares each file's sha256 with the manifest: by default when the index is small
  (``medret.integrity_checks.DEEP_AUTO_BYTES``), always with ``--deep`` (83 GB at ~1 GB/s: minutes).

An all-zero vector counts as damage: no encoder medret builds with returns one (CLS or mean pooling of a
transformer), while a zeroed file is the commonest damage and scores 0 everywhere, so its rows silently vanish.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from medret import optional
from medret.errors import IndexBuildError
from medret.storage.atomic import atomic_path, atomic_write_text
from medret.storage.checksums import HashingWriter, sha256_file

log = logging.getLogger(__name__)
SIDECAR = ".sha256"
SCAN_ROWS = 1 << 16  # rows per block of a full scan
GPU_SCAN_ROWS = 1 << 18


def sidecar(path: Path) -> Path:
    return path.with_name(path.name + SIDECAR)


def write_chunk(path: Path, arr: np.ndarray) -> str:
    """Write ``arr`` to ``path`` as .npy atomically, hashing it on the way; then its checksum beside it."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            hw = HashingWriter(f)
            np.save(hw, arr, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
    digest = hw.hexdigest()
    atomic_write_text(sidecar(path), digest)
    return digest


def first_bad_row(arr: Any, rows: Iterable[int] | None = None) -> int | None:
    """The first row of ``arr`` (among ``rows``, default all) that is not finite or is all zero, else None."""
    if rows is not None:
        idx = np.asarray(sorted(set(int(r) for r in rows)), dtype=np.int64)
        block = np.asarray(arr[idx], dtype=np.float32)
        bad = ~np.isfinite(block).all(axis=1) | ~block.any(axis=1)
        return int(idx[np.argmax(bad)]) if bad.any() else None
    for s in range(0, int(arr.shape[0]), SCAN_ROWS):
        block = np.asarray(arr[s:s + SCAN_ROWS])
        bad = ~np.isfinite(block).all(axis=1) | ~block.any(axis=1)
        if bad.any():
            return s + int(np.argmax(bad))
    return None


def verified(path: Path, arr: Any) -> bool:
    """Whether the chunk already written at ``path`` (loaded as ``arr``) can be kept by a resumed build."""
    side = sidecar(path)
    digest = sha256_file(path)
    try:
        expected = side.read_text().strip()
    except OSError:
        expected = None
    if expected is not None:
        if expected == digest:
            return True
        log.warning("chunk %s is not what was written (sha256 %s…, written %s…): encoding it again", path,
                    digest[:12], expected[:12])
        return False
    bad = first_bad_row(arr)
    if bad is not None:
        log.warning("chunk %s has no checksum and row %d is not finite or all zero: encoding it again", path, bad)
        return False
    atomic_write_text(side, digest)
    return True


def collect(work: Path, files: list[str]) -> dict[str, str]:
    """{file: sha256} of the finished chunks, from their checksums (hashing any file that has none)."""
    out = {}
    for f in files:
        try:
            out[f] = sidecar(work / f).read_text().strip()
        except OSError:
            out[f] = sha256_file(work / f)
    return out


def drop_sidecars(work: Path) -> None:
    for p in work.glob(f"*.npy{SIDECAR}"):
        p.unlink()


def check_vectors(index: Any, index_dir: Path, hint: str, file_rows: int | None = None) -> None:
    """At open: refuse an index whose vectors include non-finite or all-zero ones (see the module docstring)."""
    segs = index.embeddings if index.embeddings is not None else index.rerank_vectors
    if not segs:
        return
    names = list(index.embedding_files or [])
    if len(segs) == 1 and type(segs[0]).__module__.startswith("torch") and str(segs[0].device) != "cpu":
        bad = _bad_row_on_device(segs[0])
        if bad is not None:
            f, r = _locate(bad, file_rows, names)
            raise IndexBuildError(f"the dense index at {index_dir} is damaged: {f} row {r} is not finite or is all "
                                  f"zero (checked on {segs[0].device}); rebuild it with {hint}")
        return
    for i, seg in enumerate(segs):
        n = int(seg.shape[0])
        if n == 0 or type(seg).__module__.startswith("torch"):
            continue
        bad = first_bad_row(seg, (0, n // 2, n - 1))
        if bad is not None:
            name = names[i] if i < len(names) else f"segment {i}"
            raise IndexBuildError(f"the dense index at {index_dir} is damaged: {name} row {bad} is not finite or "
                                  f"is all zero (the file was overwritten); rebuild it with {hint}")


def _bad_row_on_device(t: Any) -> int | None:
    torch = optional.torch()
    for s in range(0, int(t.shape[0]), GPU_SCAN_ROWS):
        block = t[s:s + GPU_SCAN_ROWS]
        bad = ~torch.isfinite(block).all(dim=1) | ~(block != 0).any(dim=1)
        if bool(bad.any()):
            return s + int(torch.nonzero(bad)[0, 0])
    return None


def _locate(row: int, chunk: int | None, names: list[str]) -> tuple[str, int]:
    """(file, row in it) of a global row, from the rows per file when known."""
    if names and chunk:
        return names[min(row // chunk, len(names) - 1)], row % chunk
    return "row", row
