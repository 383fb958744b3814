"""One build at a time per artifact: an advisory lock file beside it (``fcntl.flock``).

:func:`artifact_lock` holds ``<parent>/.<name>.lock`` exclusively while the document store, BM25 index or dense
index at ``<parent>/<name>`` is built (or its manifest refreshed). A second process or thread that wants to build
the same artifact waits for the first, then finds the artifact complete and opens it instead of building it again;
builds of different artifacts do not wait for each other. Opening a finished artifact takes no lock, so a
read-only copy is served without one.

The lock file holds ``host pid`` of the holder (for messages and ``medret doctor``) and is never deleted: deleting a
lock file lets two processes hold "the" lock at once. ``flock`` excludes processes on one machine and, on Linux
NFS v4 and Lustre mounted with ``-o flock``, across machines. Where the file system refuses locks, medret logs a
warning and builds without one (every build still writes under a temporary name and renames when complete).
"""
from __future__ import annotations

import contextlib
import errno
import functools
import inspect
import logging
import os
import socket
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

from medret.storage.disk import storage_error

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])
_UNSUPPORTED = frozenset({errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL})


def lock_path(artifact: str | os.PathLike[str]) -> Path:
    p = Path(artifact)
    return p.with_name(f".{p.name}.lock")


def _me() -> str:
    return f"{socket.gethostname()} {os.getpid()}"


@contextlib.contextmanager
def artifact_lock(artifact: str | os.PathLike[str], what: str, required: bool = True) -> Iterator[bool]:
    """Hold the build lock of ``artifact``; yields True when held, False when locks are unavailable there.

    ``required``: a lock file that cannot be created (read-only folder, full disk) raises
    :class:`medret.errors.StorageError` naming it and the fix; with ``required=False`` the block runs unlocked.
    """
    path = lock_path(artifact)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        if not required:
            log.debug("no build lock for %s (%s)", artifact, e)
            yield False
            return
        err = storage_error(e, what, path)
        if err is None:
            raise
        raise err from None
    try:
        locked = _acquire(fd, path, what)
        if locked:
            _write_holder(fd)
        try:
            yield locked
        finally:
            if locked:
                _write_holder(fd, clear=True)
                fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _acquire(fd: int, path: Path, what: str) -> bool:
    if fcntl is None:  # pragma: no cover
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as e:
        if e.errno in _UNSUPPORTED:
            log.warning("the file system of %s does not support locks (%s): building %s without one; do not "
                        "build it from two processes at once", path, e.strerror, what)
            return False
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise
    log.warning("waiting for %s, which another process (%s) is building", what, _holder_text(fd) or "unknown")
    fcntl.flock(fd, fcntl.LOCK_EX)
    return True


def _write_holder(fd: int, clear: bool = False) -> None:
    try:
        os.ftruncate(fd, 0)
        if not clear:
            os.pwrite(fd, f"{_me()}\n".encode(), 0)
    except OSError:  # the holder text is for messages only
        pass


def _holder_text(fd: int) -> str:
    try:
        return os.pread(fd, 256, 0).decode("utf-8", "replace").strip()
    except OSError:
        return ""


def holder(artifact: str | os.PathLike[str]) -> str | None:
    """``"host pid"`` of the process building ``artifact`` now, or None if nobody holds its lock."""
    path = lock_path(artifact)
    if fcntl is None or not path.is_file():
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return _holder_text(fd) or "unknown"
            return None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _inside(path: str, folder: Path) -> bool:
    try:
        return Path(os.path.abspath(path)).is_relative_to(Path(os.path.abspath(folder)))
    except ValueError:
        return False


def serialized(what: str, path_arg: str = "out_dir") -> Callable[[F], F]:
    """Decorator: run the function while holding :func:`artifact_lock` on its argument ``path_arg``, and turn a
    full-disk / not-writable error about that artifact's folder into a :class:`medret.errors.StorageError`."""

    def deco(fn: F) -> F:
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            target = Path(sig.bind_partial(*args, **kwargs).arguments[path_arg])
            name = f"{what} {target}"
            with artifact_lock(target, name):
                try:
                    return fn(*args, **kwargs)
                except OSError as e:
                    # only errors about this artifact's own files (or write errors that name no file): a model
                    # loader's OSError about the Hugging Face cache keeps its own message
                    ours = not e.filename or _inside(os.fsdecode(e.filename), target.parent)
                    err = storage_error(e, name, target) if ours else None
                    if err is None:
                        raise
                    raise err from None

        return wrapper  # type: ignore[return-value]

    return deco
