"""Temporary files and folders that killed builds leave beside an artifact: found, measured and removed.

Builds write under temporary names next to the artifact ``<parent>/<name>``: ``.<name>.tmp-PID`` (the store and
the BM25 index, renamed onto ``<name>`` when complete), ``.<name>.old-PID`` (the previous copy, during the swap)
and, for dense indexes, ``.<name>.partial`` (resumable work: the next build of the same index continues it).
A build killed with SIGKILL, or by the out-of-memory killer, leaves them behind.

:func:`remove_stale` runs at the start of every build of an artifact, while that build holds the artifact's lock
(:mod:`medret.storage.locks`): nobody else is building it then, so its ``tmp``/``old`` leftovers are orphans —
except ones whose writer is still running on this machine, which are kept in case a medret without locks is writing
them. Names carry the writer's PID and start time (``.<name>.tmp-PID-START``, :mod:`medret.storage.pids`), so a PID
now used by another process is recognised and its leftover removed; names of older medret versions carry the PID
alone, and are kept while any process has it.
``.partial`` folders are left to the dense builder, which resumes or discards them. :func:`find_leftovers` lists
every leftover in a folder for ``medret doctor``.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from medret.storage.pids import pid_alive, same_process

log = logging.getLogger(__name__)
_NAME = re.compile(r"^\.(?P<name>.+?)\.(?:(?P<kind>tmp|old)-(?P<pid>\d+)(?:-(?P<start>\d+))?|(?P<partial>partial))$")


@dataclass(frozen=True)
class Leftover:
    path: Path
    artifact: Path  # what it is a temporary of
    kind: str  # "tmp", "old" or "partial"
    pid: int | None
    nbytes: int
    start: int | None = None  # the writer's start time (medret.storage.pids), when its name records it


def du(path: Path) -> int:
    """Bytes under ``path`` (a file or a folder), not following links."""
    try:
        if path.is_symlink() or path.is_file():
            return path.lstat().st_size
        total = 0
        for root, _dirs, files in os.walk(path):
            for f in files:
                try:
                    total += os.lstat(os.path.join(root, f)).st_size
                except OSError:
                    pass
        return total
    except OSError:
        return 0


def find_leftovers(folder: str | os.PathLike[str]) -> list[Leftover]:
    """Every build leftover directly inside ``folder`` (lock files are not leftovers)."""
    folder = Path(folder)
    out = []
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return []
    for p in entries:
        m = _NAME.match(p.name)
        if not m:
            continue
        kind = "partial" if m.group("partial") else m.group("kind")
        pid = int(m.group("pid")) if m.group("pid") else None
        start = int(m.group("start")) if m.group("start") else None
        out.append(Leftover(p, folder / m.group("name"), kind, pid, du(p), start))
    return out


def remove_stale(artifact: str | os.PathLike[str]) -> int:
    """Remove the ``tmp``/``old`` leftovers of ``artifact`` whose PID is not a live process here (other than
    this one); returns the bytes freed. Call it only while holding the artifact's build lock."""
    artifact = Path(artifact)
    freed = 0
    for left in find_leftovers(artifact.parent):
        if left.artifact != artifact or left.kind == "partial":
            continue
        if left.pid is not None and left.pid != os.getpid() and same_process(left.pid, left.start):
            log.warning("keeping %s: process %d, which may be writing it, is alive", left.path, left.pid)
            continue
        if left.pid is not None and left.pid != os.getpid() and pid_alive(left.pid):
            log.info("process %d is alive but started after it wrote %s: the PID was reused", left.pid, left.path)
        log.warning("removing %s (%s) left by an interrupted build", left.path, _mib(left.nbytes))
        if left.path.is_dir() and not left.path.is_symlink():
            shutil.rmtree(left.path, ignore_errors=True)
        else:
            try:
                left.path.unlink()
            except FileNotFoundError:
                pass
        freed += left.nbytes
    return freed


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"
