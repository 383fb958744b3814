"""What identifies a source's chunk files, and the check that they did not change since its store was built.

The document store's manifest records, per chunk file (``chunk_files``): ``name``, ``size``, ``mtime_ns``,
``ctime_ns``, ``ino`` (inode) and ``sha256`` of its bytes, hashed while the store is built (the build reads every
byte anyway: no second pass).

**At every open** (cheap: one ``stat`` per file, no reads): a file whose size, mtime_ns, ctime_ns and inode all
equal its record is unchanged. A file of another size has changed. A file of the same size whose other fields
differ is hashed again: an edit in place (which changes mtime and ctime, even when mtime is set back) gives
another sha256 and the store is refused as stale; a copy (``cp -a`` / ``rsync`` to another disk or machine
gives a new inode and ctime), a ``touch`` or a restore from backup gives the same sha256, and the record is
refreshed in the manifest (written to a temporary name and renamed, under the store's build lock) so the next
open is cheap again. A read-only store cannot be refreshed: it is then hashed at every open, with a warning.
The device number is not recorded: it differs between the clients of one NFS/Lustre file system.

**The corpus identity** that indexes record (``store_checksum``) is :func:`identity`: names, sizes and content
hashes only, so a corpus copied with its artifacts to another machine keeps every index valid.

Stores built by medret before this check (no ``chunk_files``) carry the old identity, a hash of each file's
name, size and first and last 64 KiB (:func:`legacy_fingerprint`, which misses a same-size edit in the middle).
They are upgraded in place at their first open when that still matches and the documents read from the files are
the ones the store holds (its recorded sha256 of ``docs.bin``: an edit made before that open is refused, not
recorded): the files are hashed once and recorded, and the old identity is kept (``fingerprint_kind``
``head-tail-64k``) so the indexes built on them stay valid.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import orjson

from medret.errors import StoreError
from medret.storage.checksums import sha256_file

STAT_FIELDS = ("size", "mtime_ns", "ctime_ns", "ino")
KIND_CONTENT = "sha256-of-chunk-files"
KIND_LEGACY = "head-tail-64k"
_PROBE = 64 * 1024


def stat_record(path: str | os.PathLike[str]) -> dict[str, int]:
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "ino": st.st_ino}


def file_record(path: Path, sha256: str, stat_before: dict[str, int]) -> dict:
    """The manifest record of a chunk file hashed while it was read; refuses a file that changed meanwhile."""
    now = stat_record(path)
    if now != stat_before:
        raise StoreError(f"chunk file {path} changed while the document store was being built (size/mtime "
                         f"{stat_before['size']}/{stat_before['mtime_ns']} -> {now['size']}/{now['mtime_ns']}); "
                         "let whatever writes it finish, then build again")
    return {"name": path.name, **now, "sha256": sha256}


def identity(records: Sequence[dict]) -> str:
    """The corpus identity indexes record: names, sizes and content hashes (no timestamps, no inodes)."""
    return hashlib.sha256(orjson.dumps([[r["name"], r["size"], r["sha256"]] for r in records])).hexdigest()


@dataclass
class Verdict:
    changed: list[str] = field(default_factory=list)  # what differs, for the message; non-empty = stale
    needs_hash: list[str] = field(default_factory=list)  # same size, other stat: hash to decide (stat-only pass)
    refreshed: list[dict] | None = None  # the records with today's stat fields, when only those differ
    hashed_bytes: int = 0

    @property
    def stale(self) -> bool:
        return bool(self.changed)


def check_files(records: Sequence[dict], files: Sequence[Path], hash_suspects: bool, deep: bool = False) -> Verdict:
    """Compare ``files`` with their manifest ``records``.

    ``hash_suspects=False``: stat only; same-size files with other stat fields are listed in ``needs_hash``.
    ``hash_suspects=True``: those are hashed, and ``refreshed`` holds updated records when their content is the
    same. ``deep``: hash every file, whatever its stat says.
    """
    v = Verdict()
    by_name = {r["name"]: r for r in records}
    names = [p.name for p in files]
    added = [n for n in names if n not in by_name]
    removed = [n for n in by_name if n not in set(names)]
    if added or removed:
        v.changed.append("chunk files " + "; ".join(
            part for part in (f"added: {_few(added)}" if added else "", f"removed: {_few(removed)}" if removed else "")
            if part))
        return v
    if names != [r["name"] for r in records]:
        v.changed.append("the chunk files are in another order")
        return v
    new_records = []
    refresh = False
    for p, rec in zip(files, records):
        try:
            st = stat_record(p)
        except OSError as e:
            v.changed.append(f"{p.name} cannot be read ({e.strerror})")
            continue
        same_stat = all(st[k] == rec.get(k) for k in STAT_FIELDS)
        if st["size"] != rec["size"]:
            v.changed.append(f"{p.name} has {st['size']:,} bytes, {rec['size']:,} when the store was built")
            continue
        if same_stat and not deep:
            new_records.append(rec)
            continue
        if not hash_suspects and not deep:
            v.needs_hash.append(p.name)
            new_records.append(rec)
            continue
        digest = sha256_file(p)
        v.hashed_bytes += st["size"]
        if digest != rec["sha256"]:
            v.changed.append(f"{p.name} has the same size but other content (sha256 {digest[:12]}…, "
                             f"{rec['sha256'][:12]}… when the store was built)")
            continue
        if not same_stat:
            refresh = True
        new_records.append({**rec, **st})
    if refresh and not v.changed:
        v.refreshed = new_records
    return v


def hash_records(files: Sequence[Path]) -> list[dict]:
    """Records of ``files`` as they are now (hashing each); for upgrading a store built before records existed."""
    out = []
    for p in files:
        before = stat_record(p)
        out.append(file_record(p, sha256_file(p), before))
    return out


def legacy_file_fingerprint(path: Path) -> list:
    """The pre-record identity of a chunk file: name, size and a hash of its first and last 64 KiB."""
    size = path.stat().st_size
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(_PROBE))
        if size > _PROBE:
            f.seek(max(_PROBE, size - _PROBE))
            h.update(f.read(_PROBE))
    return [path.name, size, h.hexdigest()[:16]]


def legacy_fingerprint(files: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for p in files:
        h.update(orjson.dumps(legacy_file_fingerprint(p)))
    return h.hexdigest()


def _few(names: Sequence[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")
