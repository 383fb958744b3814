"""Damaged embeddings: per-file sha256 of a dense index's ``emb_*.npy``, and a scan of every vector, done once.

Where each check runs, and why (MedCorp: 54M x 768 fp16 = 83 GB in 5,420 files of 10,000 rows):

* **build**: the encoder's output is checked finite before it is written; each file's sha256 is computed while it
  is written (no second read) and kept beside it in the partial folder (``emb_NNNNNN.npy.sha256``), then listed
  in the manifest under ``emb_sha256``. The finished files are then scanned (below) and recorded as verified.
* **resume**: every file already written is hashed again and compared with its checksum; one that differs
  (zeroed, NaN-filled, torn) is encoded again. A file without a checksum (a build killed between the two writes,
  or a partial folder of an older medret) is kept only if all its vectors are finite and non-zero.
* **open** (:func:`medret.storage.vectors.verify_files`; medret's indexes, MedRAG's precomputed embeddings,
  ``corpus download --embeddings`` and ``medret doctor``, which open them): every vector of a file is scanned,
  vectorised over memory-mapped blocks, unless the file is recorded as verified with its current size, mtime, ctime
  and inode (``.medret-verified.json`` beside the files). Any write to a file changes its ctime, so a file edited
  after it was verified is scanned again; a verified file costs one ``stat`` per open. A damaged file is refused
  naming the file, the rows and the fix. Where the record cannot be written (a read-only folder) it goes to
  ``$MEDRET_CACHE/verified-vectors/``; where neither can, the scan runs at every open, with a warning.
* **medret doctor** also compares each file's sha256 with the manifest: by default when the index is small
  (``medret.integrity_checks.DEEP_AUTO_BYTES``), always with ``--deep``.

**What a damaged row is** (:func:`medret.storage.vectors.row_damage`): a vector that is not finite (NaN or inf:
its scores would be NaN and sort first), that is all zero (no encoder medret builds with returns one, while a zeroed
file is the commonest damage and scores 0 everywhere, so its rows silently vanish), or whose norm is more than
``NORM_RATIO`` (100) times above or below the median norm of the index (from 4,096 rows spread over every file):
rows of 1e30 would win every query, near-zero rows would never be found. Real encoders stay far inside that band:
normalised ones give norm 1, and a transformer's pooled vectors come out of a final LayerNorm.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from medret.storage.atomic import atomic_path, atomic_write_text
from medret.storage.checksums import HashingWriter, sha256_file

log = logging.getLogger(__name__)
SIDECAR = ".sha256"
SCAN_ROWS = 1 << 14  # rows per block of a full scan (a 768-d block: 48 MiB as float32)


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


