"""sha256 of the files medret writes: while writing them (no second read) or afterwards, and their verification.

sha256 (hashlib, OpenSSL: ~1.1 GB/s on one core of the development machine) so that anybody can check a file by
hand with ``sha256sum``.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Mapping

BLOCK = 1 << 20


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    buf = bytearray(BLOCK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(view[:n])
    return h.hexdigest()


class HashingWriter:
    """A write-only file object that hashes every byte written through it (``np.save(HashingWriter(f), a)``)."""

    def __init__(self, f: Any):
        self._f = f
        self._h = hashlib.sha256()

    def write(self, b: Any) -> int:
        self._h.update(b)
        return self._f.write(b)

    def flush(self) -> None:
        self._f.flush()

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def mismatches(folder: str | os.PathLike[str], expected: Mapping[str, str]) -> list[str]:
    """The names in ``expected`` whose file in ``folder`` is missing or has another sha256, in order."""
    bad = []
    for name, digest in expected.items():
        p = Path(folder) / name
        try:
            if sha256_file(p) != digest:
                bad.append(name)
        except OSError:
            bad.append(name)
    return bad


def total_bytes(folder: str | os.PathLike[str], names: Any) -> int:
    total = 0
    for name in names:
        try:
            total += (Path(folder) / name).stat().st_size
        except OSError:
            pass
    return total
