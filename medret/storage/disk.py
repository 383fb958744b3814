"""Storage failures while writing a store or an index, as one-line errors that name the file and the fix.

A full disk (``ENOSPC``, a quota ``EDQUOT``, a file-size limit ``EFBIG``, or numpy's short-write ``OSError``
"N requested and M written", which carries no errno) and a folder medret may not write (``EROFS``, ``EACCES``,
``EPERM``) become :class:`medret.errors.StorageError`; every other ``OSError`` passes through unchanged. The builds
that use :func:`writing` write under temporary names, so after such an error nothing half-written is left behind.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
from pathlib import Path
from typing import Iterator

from medret.errors import StorageError

NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
NOT_WRITABLE = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})
_SHORT_WRITE = re.compile(r"^\d+ requested and \d+ written$")
WRITABLE_FIX = ("build medret's stores and indexes in a writable folder with --cache-dir DIR (cache_dir=DIR in "
                "Python, +retriever.cache_dir=DIR for Search-R1)")


def free_bytes(path: str | os.PathLike[str]) -> int | None:
    """Free bytes on the file system holding ``path`` (or its nearest existing parent)."""
    p = Path(path)
    for candidate in (p, *p.parents):
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return None


def _human(n: int | None) -> str:
    if n is None:
        return "unknown"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n:.1f} TiB"


def storage_error(e: BaseException, what: str, path: str | os.PathLike[str]) -> StorageError | None:
    """The StorageError for ``e`` raised while writing ``what`` at ``path``, or None if ``e`` is something else."""
    if not isinstance(e, OSError):
        return None
    where = e.filename if e.filename else os.fspath(path)
    code = e.errno
    shown = "" if where in what else f" ({where})"
    if code is None and _SHORT_WRITE.search(str(e)):
        # numpy's tofile loses fwrite's errno; the temporary files are already removed when this runs, so the
        # free space now says nothing: a short write is a full disk or the file-size limit (ulimit -f)
        return StorageError(
            f"cannot write {what}{shown}: short write ({e}): the disk is full or the file-size limit (`ulimit -f`) "
            f"was reached ({_human(free_bytes(path))} free there now); free space on that disk, or "
            f"{WRITABLE_FIX.replace('writable', 'roomier')}")
    if code in NO_SPACE:
        reason = os.strerror(code)
        return StorageError(
            f"cannot write {what}{shown}: {reason} (errno {code}; {_human(free_bytes(path))} free there); "
            f"free space on that disk, or {WRITABLE_FIX.replace('writable', 'roomier')}")
    if code in NOT_WRITABLE:
        return StorageError(f"cannot write {what}: {where} is not writable ({os.strerror(code)}, errno {code}); "
                            f"{WRITABLE_FIX}")
    return None


@contextlib.contextmanager
def writing(what: str, path: str | os.PathLike[str]) -> Iterator[None]:
    """Turn a full-disk or not-writable ``OSError`` raised inside into a :class:`StorageError`."""
    try:
        yield
    except OSError as e:
        err = storage_error(e, what, path)
        if err is None:
            raise
        raise err from None


def preallocate(path: str | os.PathLike[str], nbytes: int) -> None:
    """Reserve ``nbytes`` for ``path`` now, so that writing it through a memory map cannot hit a full disk later
    (which the kernel reports as SIGBUS, killing the process) but fails here with ``ENOSPC``."""
    if nbytes <= 0 or not hasattr(os, "posix_fallocate"):  # macOS: no reservation, memory-mapped writes as before
        return
    fd = os.open(path, os.O_RDWR)
    try:
        try:
            os.posix_fallocate(fd, 0, nbytes)
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
    finally:
        os.close(fd)
