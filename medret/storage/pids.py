"""Which process wrote a temporary file: its PID and its start time, so that a PID reused by another process is told
apart from the one that wrote it.

Temporary names carry ``PID-START`` (:func:`tag`), ``START`` being the process's start time in clock ticks after
boot (field 22 of ``/proc/PID/stat``, Linux). Where ``/proc`` is missing the name carries the PID alone, as medret
wrote it before; such a name whose PID is alive is kept (it cannot be told from its writer).
"""
from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a running process on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def process_start(pid: int) -> int | None:
    """The start time of process ``pid`` (clock ticks after boot), or None when it is gone or unknown here."""
    try:
        with open(f"/proc/{int(pid)}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    try:  # the command name (field 2) may hold spaces and parentheses: the fields after it follow the last ')'
        return int(stat[stat.rindex(b")") + 2:].split()[19])
    except (ValueError, IndexError):
        return None


def tag() -> str:
    """``PID-START`` of this process (``PID`` alone where the start time is unknown), for temporary names."""
    start = process_start(os.getpid())
    return f"{os.getpid()}" if start is None else f"{os.getpid()}-{start}"


def same_process(pid: int, start: int | None) -> bool:
    """Whether the process that wrote a name tagged ``pid`` (and ``start``, when recorded) is still running: a live
    PID whose start time differs belongs to another process now."""
    if not pid_alive(pid):
        return False
    if start is None:
        return True
    now = process_start(pid)
    return now is None or now == start
