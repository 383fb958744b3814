"""What a download compares and reports: remote file records, the state of the local copy, checksums, disk space,
progress bars."""
from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tqdm.auto import tqdm

from medret.errors import CorpusError

#: the first bytes of a git-lfs pointer file (a clone without ``git lfs pull``)
LFS_MAGIC = b"version https://git-lfs"
_HASH_BLOCK = 1 << 22


@dataclass(frozen=True)
class RemoteFile:
    """One file of a hub repository."""

    path: str  # path in the repository, e.g. "chunk/pubmed23n0001.jsonl"
    size: int
    sha256: str | None = None  # LFS files
    blob_id: str | None = None  # git blob id (sha1 of "blob <size>\\0" + content), checks plain files

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


@dataclass
class FileState:
    remote: RemoteFile
    local: Path
    status: str  # "ok" | "missing" | "partial" | "pointer" | "size" | "checksum"
    partial_bytes: int = 0

    @property
    def needs_fetch(self) -> bool:
        return self.status != "ok"

    @property
    def bytes_to_fetch(self) -> int:
        return 0 if self.status == "ok" else max(self.remote.size - self.partial_bytes, 0)


def partial_path(final: Path) -> Path:
    return final.with_name(f".{final.name}.part")


def is_lfs_pointer(path: Path) -> bool:
    """True when ``path`` holds a git-lfs pointer (a clone without ``git lfs pull``), not the data."""
    try:
        with open(path, "rb") as f:
            return f.read(len(LFS_MAGIC)) == LFS_MAGIC
    except OSError:
        return False


def git_blob_id(path: Path) -> str:
    h = hashlib.sha1()
    h.update(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_HASH_BLOCK), b""):
            h.update(block)
    return h.hexdigest()


def sha256_file(path: Path, limit: int | None = None) -> "hashlib._Hash":
    """The sha256 object of ``path``'s first ``limit`` bytes (all of them with None), to go on hashing into."""
    h = hashlib.sha256()
    left = limit
    with open(path, "rb") as f:
        while left is None or left > 0:
            block = f.read(_HASH_BLOCK if left is None else min(_HASH_BLOCK, left))
            if not block:
                break
            h.update(block)
            if left is not None:
                left -= len(block)
    return h


def checksum_matches(path: Path, rf: RemoteFile) -> bool | None:
    """True/False when the hub gave a checksum to compare with; None when it gave none."""
    if rf.sha256:
        return sha256_file(path).hexdigest() == rf.sha256
    if rf.blob_id:
        return git_blob_id(path) == rf.blob_id
    return None


def _stat_key(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def manifest_entry(local: Path, rf: RemoteFile) -> dict:
    return {"stat": _stat_key(local), "sha256": rf.sha256, "blob_id": rf.blob_id, "size": rf.size}


def inspect_local(rf: RemoteFile, local: Path, manifest_files: dict) -> FileState:
    """Compare a local file with the hub's record of it (``manifest_files``: what an earlier run verified)."""
    if not local.exists():
        part = partial_path(local)
        n = part.stat().st_size if part.exists() else 0
        if 0 < n <= rf.size:
            return FileState(rf, local, "partial", partial_bytes=n)
        return FileState(rf, local, "missing")
    if is_lfs_pointer(local):
        return FileState(rf, local, "pointer")
    if local.stat().st_size != rf.size:
        return FileState(rf, local, "size")
    known = manifest_files.get(rf.name)
    if known and known.get("stat") == _stat_key(local) and known.get("sha256") == rf.sha256 \
            and known.get("blob_id") == rf.blob_id:
        return FileState(rf, local, "ok")  # verified by an earlier run and untouched since
    ok = checksum_matches(local, rf)
    if ok is False:
        return FileState(rf, local, "checksum")
    manifest_files[rf.name] = manifest_entry(local, rf)
    return FileState(rf, local, "ok")


def disk_free(path: Path | str) -> int:
    """Free bytes on the file system that holds ``path`` (or its nearest existing parent)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def check_disk(plans: list[Any], extra_bytes: int = 0, free_fn: Callable[[Path], int] | None = None,
               flag: str = "--db-dir") -> tuple[int, int]:
    """Raise CorpusError when the target file system lacks room; return (needed, free) otherwise. ``plans`` are
    anything with ``dest`` and ``bytes_to_fetch``; ``flag`` is the option that moves them."""
    free_fn = free_fn or disk_free
    by_fs: dict[Path, int] = {}
    for p in plans:
        by_fs.setdefault(p.dest, 0)
        by_fs[p.dest] += p.bytes_to_fetch
    needed = sum(p.bytes_to_fetch for p in plans) + extra_bytes
    if not plans:
        return needed, 0
    free = min(free_fn(d) for d in by_fs)
    if free < needed:
        where = plans[0].dest.parent
        raise CorpusError(f"not enough disk space in {where}: the download needs {human_bytes(needed)} but only "
                          f"{human_bytes(free)} is free; free {human_bytes(needed - free)} there or choose another "
                          f"{flag}")
    return needed, free


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def total_bar(progress: bool, total: int, desc: str) -> Any:
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, disable=not progress,
                position=0, dynamic_ncols=True)


def file_bar(progress: bool, rf_size: int | None, name: str) -> Any:
    return tqdm(total=rf_size, unit="B", unit_scale=True, unit_divisor=1024, desc=name, disable=not progress,
                position=1, leave=False, dynamic_ncols=True)
