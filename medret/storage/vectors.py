"""Stored vectors that must never reach an answer: every row of an embeddings file scanned once, then recorded.

What counts as damage, and where the scan runs, is told in :mod:`medret.index.emb_check`. Here: the vectorised scan
over memory-mapped blocks (:func:`scan`), the median-norm reference (:func:`reference_norm`) and the record of
verified files (:func:`verify_files`, ``.medret-verified.json`` beside them: name -> size, mtime, ctime, inode).
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from medret.storage.atomic import atomic_write_text

log = logging.getLogger(__name__)
SCAN_ROWS = 1 << 14  # rows per block of a full scan (a 768-d block: 48 MiB as float32)
RECORD = ".medret-verified.json"  # files whose every vector was scanned, with their stat then
VERIFIED = "verified-vectors"  # the folder of medret's cache holding the records of read-only folders
NORM_RATIO = 100.0  # a row whose norm is this far from the index's median norm (either way) is damaged
SAMPLE_ROWS = 4096  # rows read to estimate the median norm


@dataclass(frozen=True)
class Damage:
    """The damaged rows of one embeddings file: the first run of them, and how many in all."""

    file: str
    first: int
    last: int
    count: int
    why: str

    def __str__(self) -> str:
        rows = f"row {self.first}" if self.first == self.last else f"rows {self.first}..{self.last}"
        more = f" ({self.count} damaged rows in the file)" if self.count > self.last - self.first + 1 else ""
        return f"{self.file} {rows}: {self.why}{more}"


def _norm_sq(block: Any) -> np.ndarray:
    b = np.asarray(block, dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):  # 1e30 squared: inf, which the bounds refuse
        return np.einsum("ij,ij->i", b, b)


def reference_norm(arrays: Sequence[Any]) -> float | None:
    """The median norm of up to :data:`SAMPLE_ROWS` rows spread evenly over ``arrays`` (the finite, non-zero ones);
    None when there is none."""
    sizes = [int(a.shape[0]) for a in arrays]
    total = sum(sizes)
    if total == 0:
        return None
    picks = np.unique(np.linspace(0, total - 1, min(total, SAMPLE_ROWS)).astype(np.int64))
    bounds = np.cumsum([0] + sizes)
    norms = []
    for i, a in enumerate(arrays):
        local = picks[(picks >= bounds[i]) & (picks < bounds[i + 1])] - bounds[i]
        if local.size:
            norms.append(_norm_sq(a[local]))
    sq = np.concatenate(norms)
    sq = sq[np.isfinite(sq) & (sq > 0)]
    return float(np.sqrt(np.median(sq))) if sq.size else None


def row_damage(block: Any, ref: float | None) -> np.ndarray:
    """Which rows of ``block`` are damaged (module docstring): a bool mask."""
    sq = _norm_sq(block)
    if ref is None:  # no sound row to compare with: only the absolute rules
        return ~np.isfinite(sq) | (sq == 0)
    lo, hi = (ref / NORM_RATIO) ** 2, (ref * NORM_RATIO) ** 2
    return ~((sq >= lo) & (sq <= hi))  # NaN compares False: refused too


def _why(rows: Any, ref: float | None) -> str:
    b = np.asarray(rows, dtype=np.float32)
    if not np.isfinite(b).all():
        return "not finite (NaN or inf)"
    if not b.any():
        return "all zero"
    norms = np.linalg.norm(b.astype(np.float64), axis=1)
    far = float(norms.max()) if ref is not None and float(norms.max()) > ref else float(norms.min())
    side = "above" if ref is not None and far > ref else "below"
    return f"norm {far:.3g}, more than {NORM_RATIO:g}x {side} the index's median norm {ref or 0:.3g}"


def scan(arr: Any, name: str, ref: float | None) -> Damage | None:
    """Every row of ``arr`` checked (vectorised, in blocks of :data:`SCAN_ROWS`); the damage found, or None."""
    n = int(arr.shape[0])
    bad: list[np.ndarray] = []
    for s in range(0, n, SCAN_ROWS):
        mask = row_damage(arr[s:s + SCAN_ROWS], ref)
        if mask.any():
            bad.append(np.nonzero(mask)[0] + s)
    if not bad:
        return None
    rows = np.concatenate(bad)
    first = int(rows[0])
    gaps = np.nonzero(np.diff(rows) != 1)[0]
    last = int(rows[gaps[0]]) if gaps.size else int(rows[-1])
    return Damage(name, first, last, int(rows.size), _why(arr[first:last + 1], ref))


def _stat(path: Path) -> list[int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _read_record(record: Path) -> dict[str, Any]:
    try:
        data = json.loads(record.read_text())
    except (OSError, ValueError):
        return {}
    files = data.get("files") if isinstance(data, dict) and data.get("norm_ratio") == NORM_RATIO else None
    return files if isinstance(files, dict) else {}


def _record_places(folder: Path, fallback: Path | None) -> list[Path]:
    """Where the record of ``folder``'s files is kept: beside them, else (a read-only folder) in ``fallback``, under
    a name derived from the folder's resolved path."""
    places = [folder / RECORD]
    if fallback is not None:
        key = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:24]
        places.append(Path(fallback) / f"{key}.json")
    return places


def verify_files(arrays: Sequence[Any], paths: Sequence[Path], fallback: Path | None = None) -> Damage | None:
    """Scan every vector of the files not recorded (:data:`RECORD` beside the first file, or in ``fallback``, a
    folder of medret's cache, when that one cannot be written) as verified with their current stat; record them
    all when all are sound. The first damage found, or None. ``arrays[i]`` is ``paths[i]`` loaded (memory-mapped)."""
    if not paths:
        return None
    places = _record_places(Path(paths[0]).parent, fallback)
    done: dict[str, list[Any]] = {}
    for place in places:
        for name, st in _read_record(place).items():
            done.setdefault(name, []).append(st)
    stats = [_stat(Path(p)) for p in paths]
    todo = [i for i, (p, st) in enumerate(zip(paths, stats)) if st is None or st not in done.get(Path(p).name, [])]
    if not todo:
        return None
    nbytes = sum(st[0] for st in (stats[i] for i in todo) if st is not None)
    if nbytes > 1 << 30:
        log.info("checking every vector of %d embeddings file(s) (%.1f GiB) once, e.g. %s", len(todo),
                 nbytes / 2**30, paths[todo[0]])
    ref = reference_norm(arrays)
    for i in todo:
        damage = scan(arrays[i], Path(paths[i]).name, ref)
        if damage is not None:
            return damage
    text = json.dumps({"norm_ratio": NORM_RATIO, "files": {Path(p).name: st for p, st in zip(paths, stats)
                                                            if st is not None}})
    errors = []
    for place in places:
        try:
            atomic_write_text(place, text)
            return None
        except OSError as e:
            errors.append(f"{place}: {e.strerror}")
    log.warning("cannot record that the vectors in %s were checked (%s): they will be scanned again at every open "
                "(%.1f GiB); make the folder or medret's cache writable", Path(paths[0]).parent, "; ".join(errors),
                nbytes / 2**30)
    return None
