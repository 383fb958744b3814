"""Document store: O(1) lookup of a snippet by row, texts never loaded into RAM.

Layout of a store folder (one per source)::

    docs.bin       each row's {"id","title","content"} as JSON bytes, back to back
    offsets.npy    uint64[n + 1]; row i is docs.bin[offsets[i]:offsets[i+1]]
    row_sums.npy   uint64[n]; row i's checksum (the first 8 bytes of its BLAKE2b, little-endian), checked at
                   every read of the row
    manifest.json  row count, per-file rows, the chunk files' records (size, mtime, ctime, inode, sha256 of the
                   bytes) and the corpus identity derived from them, sha256 of docs.bin and of offsets.npy

**Every row read is checked against its checksum** (``row_sums.npy``, memory-mapped like the offsets): bytes
forged at the same size, or rows swapped in ``docs.bin``, are refused naming the row instead of being served, at
the cost of one 8-byte BLAKE2b per row read (measured in docs/corpora.md). Stores built before these checksums
existed are read unchecked (``medret doctor`` says so; ``--rebuild`` adds them, ``doctor --deep`` hashes the file).

Rows are read with ``os.pread`` at their offsets (the offsets themselves are memory-mapped): a memory map of
``docs.bin`` would count every touched page in the process's RSS, and after 100,000 random lookups on a
5M-snippet store that was 3.3 GB of RSS against 46 MB with ``pread``.

The store is built once from the chunk files (atomically: a crash leaves no store that opens; one build at a
time under a lock file, see :mod:`medret.storage.locks`) and refused with a clear message when the chunk files changed
since (see :mod:`medret.corpus.fingerprint` for what is checked at each open). A damaged store file (a missing or
zeroed ``docs.bin``, a scrambled ``offsets.npy``) is refused with a message naming the file, not a traceback.
"""
from __future__ import annotations

import hashlib
import logging
import os
from array import array
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import orjson
from tqdm.auto import tqdm

from medret.corpus import fingerprint as fp
from medret.corpus.reader import iter_file
from medret.corpus.registry import Corpus, Source
from medret.errors import StoreError
from medret.progress import closing_bar
from medret.storage.atomic import atomic_path, atomic_write_bytes
from medret.storage.checksums import HashingWriter
from medret.storage.disk import WRITABLE_FIX, writing
from medret.storage.leftovers import remove_stale
from medret.storage.locks import artifact_lock

log = logging.getLogger(__name__)
FORMAT = 2
MANIFEST = "manifest.json"
ROW_SUMS = "row_sums.npy"
# what np.load raises on a damaged .npy header (it parses the header as a Python literal)
_NPY_ERRORS = (OSError, ValueError, EOFError, MemoryError, SyntaxError, TypeError, KeyError)


def row_sums(rows: Sequence[bytes]) -> np.ndarray:
    """Each row's checksum: the first 8 bytes of its BLAKE2b, as a little-endian uint64."""
    return np.frombuffer(b"".join(hashlib.blake2b(b, digest_size=8).digest() for b in rows), dtype="<u8")


class DocStore:
    """The store of one source."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._fd = -1
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def _damaged(self, name: str, what: str) -> StoreError:
        return StoreError(f"document store file {self.folder / name} {what}; delete {self.folder} and build it "
                          f"again with `medret index build --corpus NAME --retriever BM25` (the indexes built on "
                          f"it stay valid: they depend on the chunk files, not on these files)")

    def _open(self) -> None:
        try:
            self.manifest = orjson.loads((self.folder / MANIFEST).read_bytes())
            self.checksum: str = str(self.manifest["fingerprint"])
            self.files: list[tuple[str, int]] = [(str(f[0]), int(f[1])) for f in self.manifest["files"]]
            rows = int(self.manifest["rows"])
        except FileNotFoundError:
            raise self._damaged(MANIFEST, "is missing") from None
        except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
            raise self._damaged(MANIFEST, f"is damaged ({type(e).__name__}: {e})") from None
        bad = _bad_record(self.manifest.get("chunk_files"))
        if bad is not None:
            raise self._damaged(MANIFEST, f"is damaged (chunk_files holds {bad:.80}; expected records with a name, "
                                "a size and a sha256)")
        try:
            self._offsets = np.load(self.folder / "offsets.npy", mmap_mode="r", allow_pickle=False)
        except FileNotFoundError:
            raise self._damaged("offsets.npy", "is missing") from None
        except _NPY_ERRORS as e:
            raise self._damaged("offsets.npy", f"is damaged ({type(e).__name__}: {str(e)[:120]})") from None
        try:
            self._fd = os.open(self.folder / "docs.bin", os.O_RDONLY)
        except OSError as e:
            raise self._damaged("docs.bin", f"cannot be opened ({e.strerror})") from None
        self._size = os.fstat(self._fd).st_size
        o = self._offsets
        if o.ndim != 1 or o.dtype != np.uint64 or len(o) != rows + 1 or int(o[0]) != 0 or int(o[-1]) != self._size:
            found = f"{o.dtype} {o.shape}" + (f" from {int(o[0])} to {int(o[-1])}" if o.ndim == 1 and o.size else "")
            raise self._damaged("offsets.npy", f"does not match docs.bin (found {found}; expected uint64 "
                                f"({rows + 1},) from 0 to {self._size}, the size of docs.bin)")
        self._sums = self._row_sums(rows)
        starts = np.cumsum([0] + [n for _, n in self.files])
        self._file_start = {stem: int(s) for (stem, _), s in zip(self.files, starts)}
        if rows:
            self.get([0, rows - 1])  # a zeroed or overwritten docs.bin fails here, at open, not at the first search

    def _row_sums(self, rows: int) -> np.ndarray | None:
        """The rows' checksums (memory-mapped), or None for a store built before they existed."""
        name = self.manifest.get("row_sums")
        if name is None:
            return None
        if name != ROW_SUMS:
            raise self._damaged(MANIFEST, f"is damaged (row_sums={name!r:.80}; expected {ROW_SUMS!r})")
        try:
            sums = np.load(self.folder / ROW_SUMS, mmap_mode="r", allow_pickle=False)
        except FileNotFoundError:
            raise self._damaged(ROW_SUMS, "is missing") from None
        except _NPY_ERRORS as e:
            raise self._damaged(ROW_SUMS, f"is damaged ({type(e).__name__}: {str(e)[:120]})") from None
        if sums.shape != (rows,) or sums.dtype != np.dtype("<u8"):
            raise self._damaged(ROW_SUMS, f"does not match the store (found {sums.dtype} {sums.shape}; expected "
                                f"uint64 ({rows},))")
        return sums

    @property
    def checks_rows(self) -> bool:
        """Whether each row read is checked against its checksum (stores built by medret since they exist)."""
        return self._sums is not None

    @classmethod
    def open(cls, source: Source, build: bool = True, progress: bool = False) -> "DocStore":
        """Open the source's store, building it if absent (one process builds, others wait); refuse a stale store."""
        folder = source.store_dir
        if not (folder / MANIFEST).exists():
            if not build:
                raise StoreError(f"no document store for {source.name!r} at {folder}; build it with "
                                 f"`medret index build --corpus {source.name} --retriever BM25`")
            with artifact_lock(folder, f"the document store of {source.name}"):
                if not (folder / MANIFEST).exists():  # another process may have built it while this one waited
                    _build_store(source, progress)
        return _checked(cls(folder), source)

    def __len__(self) -> int:
        return int(self.manifest["rows"])

    def get(self, rows: Sequence[int] | np.ndarray) -> list[dict]:
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        n = len(self)
        if len(rows) and (rows.min() < 0 or rows.max() >= n):
            bad = int(rows[(rows < 0) | (rows >= n)][0])
            raise StoreError(f"row {bad} is outside the document store of {n} rows")
        start = self._offsets[rows]
        end = self._offsets[rows + 1]
        if len(rows) and ((end < start).any() or int(end.max()) > self._size):
            i = int(np.nonzero((end < start) | (end > self._size))[0][0])
            raise self._damaged("offsets.npy", f"is damaged: row {int(rows[i])} spans bytes {int(start[i])}.."
                                f"{int(end[i])} of a {self._size}-byte docs.bin")
        start, end = start.tolist(), end.tolist()
        fd = self._fd
        try:
            raw = [os.pread(fd, e - s, s) for s, e in zip(start, end)]
            if self._sums is not None:
                wrong = np.nonzero(row_sums(raw) != self._sums[rows])[0]
                if wrong.size:
                    i = int(wrong[0])
                    raise self._damaged("docs.bin", f"is damaged: row {int(rows[i])} (bytes {start[i]}..{end[i]}) is "
                                        f"not what was stored (its checksum in {ROW_SUMS} differs: bytes edited, "
                                        "forged or swapped since the build)")
            return [orjson.loads(b) for b in raw]
        except (ValueError, OSError):  # orjson.JSONDecodeError is a ValueError
            for r, s, e in zip(rows.tolist(), start, end):
                try:
                    orjson.loads(os.pread(fd, e - s, s))
                except (ValueError, OSError) as err:
                    raise self._damaged("docs.bin", f"is damaged: row {r} (bytes {s}..{e}) is not a stored snippet "
                                        f"({type(err).__name__})") from None
            raise

    def iter_batches(self, batch_size: int = 1024, start: int = 0) -> Iterator[tuple[int, list[dict]]]:
        for s in range(start, len(self), batch_size):
            yield s, self.get(range(s, min(s + batch_size, len(self))))

    def row_of(self, stem: str | Sequence[str], line: int | np.ndarray) -> np.ndarray | int:
        """Global row of the snippet on ``line`` (0-based) of chunk file ``stem`` (MedRAG's metadata form)."""
        if isinstance(stem, str):
            return self._file_start[stem] + int(line)
        return np.asarray([self._file_start[s] for s in stem], dtype=np.int64) + np.asarray(line, dtype=np.int64)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _bad_record(records: object) -> str | None:
    """The first malformed entry of a manifest's ``chunk_files``, as written (None when it is absent, a store of the
    first format, or well formed): every record is used at each open."""
    if records is None:
        return None
    if not isinstance(records, list):
        return repr(records)
    for r in records:
        if not (isinstance(r, dict) and isinstance(r.get("name"), str) and isinstance(r.get("sha256"), str)
                and isinstance(r.get("size"), int) and not isinstance(r.get("size"), bool)):
            return repr(r)
    return None


class UnionStore:
    """Several sources searched as one collection; source i's rows follow those of sources before it."""

    def __init__(self, stores: list[DocStore]):
        self.stores = stores
        self._starts = np.cumsum([0] + [len(s) for s in stores])
        self.checksum = hashlib.sha256("".join(s.checksum for s in stores).encode()).hexdigest()
        self.files = [f for s in stores for f in s.files]

    def __len__(self) -> int:
        return int(self._starts[-1])

    def get(self, rows: Sequence[int] | np.ndarray) -> list[dict]:
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self)):
            raise StoreError(f"a row is outside the document store of {len(self)} rows")
        which = np.searchsorted(self._starts, rows, side="right") - 1
        out: list[dict] = [{}] * len(rows)
        for i, store in enumerate(self.stores):
            idx = np.nonzero(which == i)[0]
            if len(idx):
                for j, d in zip(idx.tolist(), store.get(rows[idx] - self._starts[i])):
                    out[j] = d
        return out

    def iter_batches(self, batch_size: int = 1024, start: int = 0) -> Iterator[tuple[int, list[dict]]]:
        for s in range(start, len(self), batch_size):
            yield s, self.get(np.arange(s, min(s + batch_size, len(self))))

    def offset_of(self, store_index: int) -> int:
        return int(self._starts[store_index])

    def row_of(self, stem, line):
        for i, s in enumerate(self.stores):
            if isinstance(stem, str) and stem in s._file_start:
                return self.offset_of(i) + s.row_of(stem, line)
        raise StoreError(f"chunk file {stem!r} is not part of this corpus")

    def close(self) -> None:
        for s in self.stores:
            s.close()


def stored_rows(source: Source) -> int | None:
    """The row count the source's built store records, without opening it; None when there is none (or it is
    unreadable: opening the store says why)."""
    try:
        return int(orjson.loads((source.store_dir / MANIFEST).read_bytes())["rows"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def open_corpus_store(corpus: Corpus, build: bool = True, progress: bool = False) -> DocStore | UnionStore:
    stores = [DocStore.open(s, build=build, progress=progress) for s in corpus.sources]
    return stores[0] if len(stores) == 1 else UnionStore(stores)


def _stale(source: Source, changes: list[str]) -> StoreError:
    more = f" (and {len(changes) - 1} more)" if len(changes) > 1 else ""
    return StoreError(
        f"the chunk files of {source.name!r} changed since its document store was built ({changes[0]}{more}): "
        f"indexes built on the old files would return wrong snippets. Rebuild with `medret index build --corpus "
        f"NAME --retriever NAME --rebuild` (or delete {source.store_dir})")


def _checked(store: DocStore, source: Source) -> DocStore:
    """``store`` if the source's chunk files are those it was built from (see medret.corpus.fingerprint), else
    StoreError; refreshes the manifest's records after a copy, upgrades a store built before records existed."""
    files = list(source.chunk_files)
    records = store.manifest.get("chunk_files")
    try:
        if records is None:
            if fp.legacy_fingerprint(files) != store.checksum:
                raise _stale(source, ["a file's name, size, or first or last 64 KiB differ"])
        else:
            v = fp.check_files(records, files, hash_suspects=False)
            if v.stale:
                raise _stale(source, v.changed)
            if not v.needs_hash:
                return store
            # not a warning: nothing to act on unless the content differs, and then the refusal says so
            log.info("%d chunk file(s) of %s have another mtime, ctime or inode than when the store was built "
                        "(copied, touched or restored?), e.g. %s: checking their content", len(v.needs_hash),
                        source.name, v.needs_hash[0])
    except BaseException:
        store.close()
        raise
    store.close()
    # hash under the build lock: of many processes opening a copied corpus at once, one hashes and records
    folder = source.store_dir
    with artifact_lock(folder, f"the document store of {source.name}", required=False):
        store = DocStore(folder)  # as it is now: another process may have refreshed or rebuilt it meanwhile
        try:
            records = store.manifest.get("chunk_files")
            if records is None:
                return _upgrade(store, source, files)
            v = fp.check_files(records, files, hash_suspects=True)
            if v.stale:
                raise _stale(source, v.changed)
            if v.refreshed is not None:
                _rewrite_manifest(store, {**store.manifest, "chunk_files": v.refreshed},
                                  f"{v.hashed_bytes / 2**20:.1f} MiB")
        except BaseException:
            store.close()
            raise
    return store


def _upgrade(store: DocStore, source: Source, files: list) -> DocStore:
    """A store built before chunk-file records: record them (hashing every file once), keeping its identity."""
    if not os.access(store.folder, os.W_OK):
        log.warning("the document store %s was built by an older medret and cannot be upgraded (not writable): "
                    "only the size and the first and last 64 KiB of each chunk file are compared at open; rebuild "
                    "it with `--rebuild` where it can be written, or %s", store.folder, WRITABLE_FIX)
        return store
    total = sum(p.stat().st_size for p in files)
    log.warning("recording the content hashes of %d chunk files of %s (%.1f GiB, once): its store was built by "
                "an older medret", len(files), source.name, total / 2**30)
    records = _records_of_stored_content(store, source, files)
    _rewrite_manifest(store, {**store.manifest, "format": FORMAT, "fingerprint_kind": fp.KIND_LEGACY,
                              "chunk_files": records}, f"{total / 2**20:.1f} MiB")
    return store


def _records_of_stored_content(store: DocStore, source: Source, files: list) -> list[dict]:
    """The chunk files' records, hashed now, once their documents are shown to be the ones the store holds: the
    first format's identity (size, first and last 64 KiB) misses a same-size edit in the middle, which recording
    today's hashes would make permanent. The documents are read and serialised as the build does, and their
    sha256 compared with the one the store recorded of ``docs.bin`` (one pass over each file: the same read
    hashes it)."""
    expected = store.manifest.get("sha256")
    if not isinstance(expected, str):
        raise store._damaged(MANIFEST, "has no sha256 of docs.bin (a store of medret's first format always "
                             "recorded one)")
    stored = hashlib.sha256()
    records = []
    rows = 0
    for path in files:
        before = fp.stat_record(path)
        content = hashlib.sha256()
        for _, doc in iter_file(path, digest=content):
            stored.update(orjson.dumps(doc))
            rows += 1
        records.append(fp.file_record(path, content.hexdigest(), before))
    if rows != len(store) or stored.hexdigest() != expected:
        raise _stale(source, [f"the chunk files hold {rows:,} snippets whose text differs from the {len(store):,} "
                              "the store was built from (a same-size edit that medret's first format could not "
                              "see); nothing was recorded"])
    return records


def _rewrite_manifest(store: DocStore, manifest: dict, hashed: str) -> None:
    try:
        atomic_write_bytes(store.folder / MANIFEST, orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
        store.manifest = manifest
    except OSError as e:
        log.warning("cannot record the chunk files' new timestamps in %s (%s): their content (%s) will be hashed "
                    "again at every open; make the store writable, or %s", store.folder / MANIFEST, e.strerror,
                    hashed, WRITABLE_FIX)


def build_store(source: Source, progress: bool = False) -> Path:
    """Build (or rebuild) the store of one source from its chunk files, atomically, holding its build lock."""
    with artifact_lock(source.store_dir, f"the document store of {source.name}"):
        return _build_store(source, progress)


def _build_store(source: Source, progress: bool = False) -> Path:
    """Build the store; the caller holds the lock. Each chunk file is hashed as it is read (no second pass)."""
    folder = source.store_dir
    remove_stale(folder)
    log.info("building document store for %s (%d chunk files) at %s", source.name, len(source.chunk_files), folder)
    bar = _bar(progress, len(source.chunk_files), f"store {source.name}")
    with closing_bar(bar), writing(f"the document store of {source.name}", folder), atomic_path(folder) as tmp:
        tmp.mkdir(parents=True)
        offsets = array("Q", [0])
        sums = bytearray()
        digest = hashlib.sha256()
        files = []
        records = []
        pos = 0
        with open(tmp / "docs.bin", "wb") as out:
            for path in source.chunk_files:
                n = 0
                before = fp.stat_record(path)
                content = hashlib.sha256()
                for _, doc in iter_file(path, digest=content):
                    b = orjson.dumps(doc)
                    out.write(b)
                    digest.update(b)
                    sums += hashlib.blake2b(b, digest_size=8).digest()
                    pos += len(b)
                    offsets.append(pos)
                    n += 1
                files.append([path.stem, n])
                records.append(fp.file_record(path, content.hexdigest(), before))
                if bar:
                    bar.update(1)
        with open(tmp / "offsets.npy", "wb") as f:
            hw = HashingWriter(f)
            np.save(hw, np.frombuffer(offsets, dtype=np.uint64), allow_pickle=False)
        with open(tmp / ROW_SUMS, "wb") as f:
            sums_hw = HashingWriter(f)
            np.save(sums_hw, np.frombuffer(bytes(sums), dtype="<u8"), allow_pickle=False)
        manifest = {"format": FORMAT, "source": source.name, "rows": len(offsets) - 1, "files": files,
                    "fingerprint": fp.identity(records), "fingerprint_kind": fp.KIND_CONTENT,
                    "chunk_files": records, "sha256": digest.hexdigest(), "offsets_sha256": hw.hexdigest(),
                    "row_sums": ROW_SUMS, "row_sums_sha256": sums_hw.hexdigest()}
        (tmp / MANIFEST).write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    return folder


def _bar(progress: bool, total: int, desc: str):
    if not progress:
        return None

    return tqdm(total=total, desc=desc, unit="file")
