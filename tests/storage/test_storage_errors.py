"""Issue 13 item 10 (storage): damaged store / BM25 files, a full disk and a read-only db dir each give one line
naming the file, what is wrong and the fix — exit 1 on the command line, a MedretError subclass in Python — and
leave nothing half-written.

The breaks reproduced: a zeroed or deleted docs.bin (orjson.JSONDecodeError, FileNotFoundError), a scrambled
offsets.npy (MemoryError), damaged BM25 indices/data (IndexError, ValueError), a full disk (OSError Errno 28) and
a read-only db dir (OSError Errno 30) all ended in tracebacks. Full disks and read-only folders are real here:
a small tmpfs and a read-only bind mount (root only; skipped elsewhere), and RLIMIT_FSIZE (any user).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medret import clear_cache, get_retriever
from medret.corpus.registry import resolve_corpus
from medret.corpus.store import open_corpus_store
from medret.errors import IndexBuildError, MedretError, StorageError, StoreError
from tests.conftest import TOY_DOCS, write_chunks

WORDS = ("sepsis mortality elderly patients renal failure creatinine stroke anticoagulation delirium pneumonia "
         "insulin potassium fluids pressure heart lung kidney infection risk treatment outcome").split()


def medret_cli(*args: str, **kw) -> tuple[int, str, str]:
    out = subprocess.run([sys.executable, "-m", "medret", *args], capture_output=True, **kw)
    # bytes, decoded here: text=True would turn the progress bars' carriage returns into newlines
    return out.returncode, out.stdout.decode(), out.stderr.decode()


def visible_lines(err: str) -> list[str]:
    """stderr split at newlines and carriage returns (progress bars redraw their line), escapes removed."""
    plain = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", err)
    return [line.strip() for line in re.split(r"[\r\n]", plain) if line.strip()]


def assert_one_line_error(rc: int, err: str, *needles: str) -> str:
    """Exit status 1, no traceback, and the error is one line, the last: `medret: error: ...` with every needle
    (before it, only progress-bar renderings)."""
    assert rc == 1, err
    assert "Traceback" not in err
    lines = visible_lines(err)
    assert lines and lines[-1].startswith("medret: error: "), err
    assert all("%|" in line for line in lines[:-1]), err
    for n in needles:
        assert n in lines[-1], (n, lines[-1])
    return lines[-1]


def corpus_of(folder: Path, rows: int) -> Path:
    (folder / "chunk").mkdir(parents=True)
    with open(folder / "chunk" / "part.jsonl", "w") as f:
        for i in range(rows):
            text = " ".join(WORDS[(i * 13 + j * j) % len(WORDS)] for j in range(20))
            f.write(json.dumps({"id": f"part_{i}", "title": f"Topic {i}", "content": text}) + "\n")
    return folder


def built(folder: Path, rows: int = 0) -> Path:
    """A corpus with its store and BM25 index built."""
    corpus = corpus_of(folder, rows) if rows else write_chunks(folder, {"toy_a": TOY_DOCS[:5], "toy_b": TOY_DOCS[5:]})
    get_retriever(corpus_name=str(corpus), retriever_name="BM25").search(["sepsis"], 1)
    clear_cache()
    return corpus


def npy_data_offset(path: Path) -> int:
    with open(path, "rb") as f:
        np.lib.format.read_magic(f)
        np.lib.format.read_array_header_1_0(f)
        return f.tell()


def scramble(path: Path, keep_header: bool, value: bytes | None = None) -> None:
    """Overwrite the file in place at the same size: random bytes (or ``value`` repeated), header kept or not."""
    size = path.stat().st_size
    start = npy_data_offset(path) if keep_header else 0
    fill = os.urandom(size - start) if value is None else (value * (size // len(value) + 1))[: size - start]
    with open(path, "r+b") as f:
        f.seek(start)
        f.write(fill)


STORE, BM25 = "store", "bm25"
DAMAGE = {
    "docs.bin zeroed": (STORE, "docs.bin", lambda p: scramble(p, False, b"\0"), StoreError, "is damaged: row 0"),
    "docs.bin deleted": (STORE, "docs.bin", lambda p: p.unlink(), StoreError, "cannot be opened"),
    "offsets.npy scrambled": (STORE, "offsets.npy", lambda p: scramble(p, False), StoreError, "offsets.npy"),
    "offsets.npy values scrambled": (STORE, "offsets.npy", lambda p: scramble(p, True), StoreError,
                                     "does not match docs.bin"),
    "indices.csc zeroed": (BM25, "indices.csc.index.npy", lambda p: scramble(p, False, b"\0"), IndexBuildError,
                           "is missing or damaged"),
    "indices.csc values scrambled": (BM25, "indices.csc.index.npy", lambda p: scramble(p, True), IndexBuildError,
                                     "document ids outside"),
    "data.csc zeroed": (BM25, "data.csc.index.npy", lambda p: scramble(p, False, b"\0"), IndexBuildError,
                        "is missing or damaged"),
    "data.csc values NaN": (BM25, "data.csc.index.npy", lambda p: scramble(p, True, b"\xff\xff\xff\x7f"),
                            IndexBuildError, "not finite and positive"),
    "data.csc truncated": (BM25, "data.csc.index.npy", lambda p: os.truncate(p, p.stat().st_size - 4),
                           IndexBuildError, "when built"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_file_gives_one_line_naming_it(tmp_path, case):
    folder, name, damage, cls, what = DAMAGE[case]
    corpus = built(tmp_path / "toy")
    target = corpus / "medret" / folder / name
    damage(target)
    with pytest.raises(cls) as e:
        get_retriever(corpus_name=str(corpus), retriever_name="BM25").search(["sepsis"], 3)
    assert isinstance(e.value, MedretError)
    msg = str(e.value)
    assert str(target) in msg and what in msg and "\n" not in msg
    assert ("--rebuild" in msg) if folder == BM25 else ("build it again" in msg)
    rc, _, err = medret_cli("search", "sepsis", "--corpus", str(corpus))
    assert_one_line_error(rc, err, str(target), what)


def test_damage_past_the_sampled_ends_is_caught_at_search(tmp_path):
    """Open checks the first and last 4,096 postings; a scrambled middle is caught by the search itself."""
    corpus = built(tmp_path / "big", rows=3000)
    bm25 = corpus / "medret" / "bm25"
    indices = np.load(bm25 / "indices.csc.index.npy", mmap_mode="r+")
    assert len(indices) > 3 * 4096
    indices[4096:-4096] = 10**9
    indices.flush()
    del indices
    with pytest.raises(IndexBuildError, match=r"indices.csc.index.npy is missing or damaged \(IndexError"):
        get_retriever(corpus_name=str(corpus), retriever_name="BM25").search(["sepsis mortality renal"], 3)
    clear_cache()
    rc, _, err = medret_cli("search", "sepsis mortality renal", "--corpus", str(corpus))
    assert_one_line_error(rc, err, "indices.csc.index.npy", "--rebuild")


def test_offset_past_the_end_of_docs_bin_is_refused_at_lookup(tmp_path):
    corpus = built(tmp_path / "toy")
    offsets = np.load(corpus / "medret" / "store" / "offsets.npy", mmap_mode="r+")
    offsets[4] = 2**62  # row 3 ends and row 4 starts beyond the file: before, a 4 EiB read (MemoryError)
    offsets.flush()
    del offsets
    store = open_corpus_store(resolve_corpus(str(corpus), None))  # rows 0 and 7 are fine
    with pytest.raises(StoreError, match=r"offsets.npy is damaged: row 3 spans bytes \d+..4611686018427387904"):
        store.get([3])
    store.close()


# ------------------------------------------------------------------------------------------- full disk, read-only


@contextlib.contextmanager
def mounted(*cmds: list[str], target: Path):
    for cmd in cmds:
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            subprocess.run(["umount", "-l", str(target)], capture_output=True)
            pytest.skip(f"`{' '.join(cmd)}` failed ({r.stderr.strip()}): needs root and mount permission")
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=True)


def tmpfs(path: Path, size: str):
    path.mkdir(parents=True, exist_ok=True)
    return mounted(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], target=path)


def read_only(src: Path, path: Path):
    path.mkdir(parents=True, exist_ok=True)
    return mounted(["mount", "--bind", str(src), str(path)], ["mount", "-o", "remount,bind,ro", str(path)],
                   target=path)


def fill(folder: Path, leave: int) -> None:
    """Take all but ``leave`` bytes of the file system holding ``folder``."""
    free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
    fd = os.open(folder / "filler", os.O_CREAT | os.O_WRONLY)
    try:
        os.posix_fallocate(fd, 0, free - leave)
    finally:
        os.close(fd)


def written(folder: Path) -> list[str]:
    """What a failed build left: anything but lock files (which are empty and stay) and the filler."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.is_file() and not p.name.endswith(".lock") and p.name != "filler")


def test_full_disk_while_building_the_store(tmp_path):
    corpus = corpus_of(tmp_path / "big", rows=3000)  # ~600 KB of text
    with tmpfs(tmp_path / "small", "256k") as cache:
        with pytest.raises(StorageError) as e:
            get_retriever(corpus_name=str(corpus), retriever_name="BM25", cache_dir=str(cache))
        msg = str(e.value)
        assert "No space left on device (errno 28" in msg and "the document store of big" in msg
        assert "--cache-dir" in msg and "free space" in msg
        assert written(cache) == []
        rc, _, err = medret_cli("search", "sepsis", "--corpus", str(corpus), "--cache-dir", str(cache))
        assert_one_line_error(rc, err, "No space left on device", str(cache))
        assert written(cache) == []


@pytest.mark.parametrize("stage", ["arrays", "scratch"])
def test_full_disk_while_building_bm25_gives_an_error_not_sigbus(tmp_path, stage):
    """The BM25 arrays are written through memory maps: on a full disk a page write is a SIGBUS that kills the
    process; medret reserves their space first, so the build fails with ENOSPC before it maps them. Earlier, the
    scratch files are written with numpy's tofile, whose short write carries no errno."""
    corpus = corpus_of(tmp_path / "big", rows=3000)
    ref = tmp_path / "ref"
    built_ref = get_retriever(corpus_name=str(corpus), retriever_name="BM25", cache_dir=str(ref))
    clear_cache()
    del built_ref
    [bm25_ref] = list(ref.glob("*/bm25"))
    arrays = sum((bm25_ref / n).stat().st_size for n in ("data.csc.index.npy", "indices.csc.index.npy"))
    other = sum(p.stat().st_size for p in bm25_ref.iterdir()) - arrays
    scratch = arrays  # two int32 scratch files of nnz entries each, deleted before the manifest is written
    with tmpfs(tmp_path / "small", "8m") as cache:
        open_corpus_store(resolve_corpus(str(corpus), None, str(cache))).close()
        store_files = written(cache)
        # arrays: room for the scratch files, the small files and half of the arrays: the build gets as far as
        # the memory-mapped arrays and no further. scratch: room for a quarter of the scratch files
        fill(cache, leave=scratch + other + arrays // 2 + 64 * 1024 if stage == "arrays" else scratch // 4)
        rc, _, err = medret_cli("index", "build", "--corpus", str(corpus), "--retriever", "BM25", "--cache-dir",
                                str(cache))
        assert rc != -7, "killed by SIGBUS"
        assert_one_line_error(rc, err, "cannot write the BM25 index",
                              "No space left on device" if stage == "arrays" else "short write")
        assert written(cache) == store_files  # the store is intact, no .bm25.tmp-* left
        if stage == "arrays":  # the Python API: the same error, as a MedretError
            from medret.index.bm25 import build_bm25

            store = open_corpus_store(resolve_corpus(str(corpus), None, str(cache)))
            with pytest.raises(StorageError, match="No space left on device"):
                build_bm25(store, resolve_corpus(str(corpus), None, str(cache)).artifact_dir / "bm25")
            store.close()
            assert written(cache) == store_files
        # and what the reservation protects against: a memory-mapped write on this full file system is a SIGBUS
        crash = subprocess.run([sys.executable, "-c", (
            "import numpy as np, sys; a = np.lib.format.open_memmap(sys.argv[1], mode='w+', dtype=np.float32, "
            "shape=(4 << 20,)); a[:] = 1; a.flush()"), str(cache / "mapped.npy")], capture_output=True)
        assert crash.returncode == -7
        (cache / "mapped.npy").unlink()


def test_full_disk_while_writing_embeddings(tmp_path):
    from medret.index.dense_build import build_dense_index, partial_dir
    from tests.index.test_dense_build import CONFIG, FakeEncoder, ListStore, make_docs

    store = ListStore(make_docs(3000))
    with tmpfs(tmp_path / "small", "1m") as cache:
        fill(cache, leave=32 * 1024)  # a 1000-row chunk of 12-d fp16 vectors is 24 KB: the second one fails
        with pytest.raises(StorageError, match=r"cannot write the dense index .*ix: .*No space left on device.*"
                                               r"--cache-dir"):
            build_dense_index(store, cache / "ix", CONFIG, encoder=FakeEncoder(), chunk_rows=1000, progress=False)
        left = written(cache)
        assert not [f for f in left if ".tmp-" in f]  # nothing half-written ...
        work = partial_dir(cache / "ix").name
        assert set(left) <= {f"{work}/build.json", f"{work}/emb_000000.npy", f"{work}/emb_000000.npy.sha256"}
        (cache / "filler").unlink()  # ... and the complete chunk is reused once there is room
        enc = FakeEncoder()
        build_dense_index(store, cache / "ix", CONFIG, encoder=enc, chunk_rows=1000, progress=False)
        # (kept by its checksum, or, when the disk filled up before the checksum was written, by its vectors)
        assert len(enc.seen) == 3000 - (1000 if f"{work}/emb_000000.npy" in left else 0)


def test_full_disk_while_encoding_from_the_command_line(tmp_path, tiny_bert_dir):
    corpus = corpus_of(tmp_path / "big", rows=3000)  # one chunk of 3000 x 32 float32: 384 KB
    with tmpfs(tmp_path / "small", "4m") as cache:
        rc, _, err = medret_cli("index", "build", "--corpus", str(corpus), "--retriever", "BM25", "--cache-dir",
                                str(cache))
        assert rc == 0, err
        fill(cache, leave=64 * 1024)
        rc, _, err = medret_cli("index", "build", "--corpus", str(corpus), "--retriever", str(tiny_bert_dir),
                                "--pooling", "cls", "--device", "cpu", "--cache-dir", str(cache))
        assert_one_line_error(rc, err, "cannot write the dense index", "No space left on device", "--cache-dir")
        assert not [f for f in written(cache) if ".tmp-" in f]


def test_file_size_limit_gives_one_line(tmp_path):
    """RLIMIT_FSIZE (`ulimit -f`), which any user can set: writes past it fail with EFBIG."""
    corpus = corpus_of(tmp_path / "big", rows=3000)

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    rc, _, err = medret_cli("index", "build", "--corpus", str(corpus), "--retriever", "BM25", preexec_fn=limit)
    assert_one_line_error(rc, err, "File too large (errno 27", "the document store of big")
    assert written(corpus / "medret") == []


def test_read_only_db_dir_names_the_fix_and_cache_dir_works(tmp_path):
    db = tmp_path / "db"
    write_chunks(db / "textbooks", {"Anatomy": TOY_DOCS[:4], "Physiology": TOY_DOCS[4:]})
    with read_only(db, tmp_path / "ro") as ro:
        with pytest.raises(StorageError) as e:
            get_retriever(corpus_name="Textbooks", retriever_name="BM25", db_dir=str(ro))
        msg = str(e.value)
        assert f"{ro}/textbooks/medret" in msg and "Read-only file system, errno 30" in msg
        assert "--cache-dir DIR" in msg and "cache_dir=DIR" in msg
        rc, _, err = medret_cli("search", "sepsis", "--corpus", "Textbooks", "--db-dir", str(ro))
        assert_one_line_error(rc, err, "is not writable (Read-only file system", "--cache-dir")
        cache = tmp_path / "cache"
        rc, out, err = medret_cli("search", "sepsis", "--corpus", "Textbooks", "--db-dir", str(ro), "--cache-dir",
                                  str(cache), "--json")
        assert rc == 0, err
        got = json.loads(out)
        assert not (db / "textbooks" / "medret").exists()  # nothing was written into the db dir
    # the same search on a writable copy of the db dir gives the same answer
    expected = get_retriever(corpus_name="Textbooks", retriever_name="BM25", db_dir=str(db)).retrieve(["sepsis"], 3)
    clear_cache()
    assert got == expected


def test_read_only_db_dir_with_artifacts_built_is_served(tmp_path):
    db = tmp_path / "db"
    write_chunks(db / "textbooks", {"Anatomy": TOY_DOCS[:4], "Physiology": TOY_DOCS[4:]})
    expected = get_retriever(corpus_name="Textbooks", retriever_name="BM25", db_dir=str(db)).retrieve(["sepsis"], 3)
    clear_cache()
    with read_only(db, tmp_path / "ro") as ro:
        rc, out, err = medret_cli("search", "sepsis", "--corpus", "Textbooks", "--db-dir", str(ro), "--json")
        assert rc == 0 and err == "", err  # no lock, no write, no warning
        assert json.loads(out) == expected


def test_doctor_reports_a_truncated_bm25_file(tmp_path):
    corpus = built(tmp_path / "toy")
    target = corpus / "medret" / "bm25" / "indices.csc.index.npy"
    os.truncate(target, target.stat().st_size - 8)
    rc, out, _ = medret_cli("doctor", "--corpus", str(corpus), "--no-search", "--json")
    [line] = [c for c in json.loads(out)["checks"] if c["key"] == "index"]
    assert rc == 1 and line["status"] == "fail" and "damaged" in line["title"]
    assert str(target) in line["detail"] and line["fix"].endswith("--rebuild")
