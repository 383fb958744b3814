"""Issue 13 item 3: any rewrite of a chunk file is caught; a copy is not mistaken for a change.

The break reproduced: rewriting line 500 of a ~546 KB chunk file at the same length left the old text served,
because the fingerprint hashed only name, size and the first and last 64 KiB (kept here as
``legacy_fingerprint``, which each test shows to be blind to the edit).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from medret import cli
from medret.corpus import fingerprint as fp
from medret.corpus.registry import resolve_corpus
from medret.corpus.store import DocStore, open_corpus_store
from medret.errors import StoreError

LINES = 1000
LINE_BYTES = 546  # 1000 lines: a 546 KB chunk file, as in the issue


def big_corpus(folder: Path) -> Path:
    """folder/chunk/big.jsonl: 1000 snippets of exactly LINE_BYTES bytes each (newline included)."""
    (folder / "chunk").mkdir(parents=True)
    lines = []
    for i in range(LINES):
        obj = {"id": f"big_{i}", "title": f"Topic {i}", "content": ""}
        pad = LINE_BYTES - 1 - len(json.dumps(obj))
        obj["content"] = (f"snippet {i} about sepsis and renal failure " * 20)[:pad]
        line = json.dumps(obj)
        assert len(line) == LINE_BYTES - 1
        lines.append(line + "\n")
    (folder / "chunk" / "big.jsonl").write_text("".join(lines))
    return folder


def rewrite_line(path: Path, lineno: int, old: str, new: str) -> None:
    """Replace ``old`` by ``new`` (same length) on line ``lineno`` (0-based), in place (same inode)."""
    assert len(old) == len(new)
    data = path.read_bytes()
    start = lineno * LINE_BYTES
    line = data[start:start + LINE_BYTES]
    assert old.encode() in line
    with open(path, "r+b") as f:
        f.seek(start)
        f.write(line.replace(old.encode(), new.encode(), 1))


def test_same_size_edit_in_the_middle_is_refused_with_rebuild_hint(tmp_path, capsys):
    corpus_dir = big_corpus(tmp_path / "big")
    chunk = corpus_dir / "chunk" / "big.jsonl"
    assert chunk.stat().st_size == LINES * LINE_BYTES
    store = open_corpus_store(resolve_corpus(str(corpus_dir), None))
    assert store.get([500])[0]["content"].startswith("snippet 500 about sepsis")
    store.close()
    legacy_before = fp.legacy_fingerprint([chunk])
    size_before = chunk.stat().st_size

    rewrite_line(chunk, 500, "sepsis", "asthma")

    assert chunk.stat().st_size == size_before
    assert fp.legacy_fingerprint([chunk]) == legacy_before  # the old fingerprint cannot see this edit
    with pytest.raises(StoreError, match=r"big.jsonl has the same size but other content.*--rebuild"):
        open_corpus_store(resolve_corpus(str(corpus_dir), None))
    # the command line: one line, exit 1
    rc = cli.main(["search", "asthma", "--corpus", str(corpus_dir)])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and err.startswith("medret: error: the chunk files of 'big' changed")
    assert "--rebuild" in err
    # medret doctor reports it (the store line, and the content hashes)
    rc = cli.main(["doctor", "--corpus", str(corpus_dir), "--no-search", "--json"])
    checks = json.loads(capsys.readouterr().out)["checks"]
    assert rc == 1
    [store_line] = [c for c in checks if c["key"] == "store"]
    assert store_line["status"] == "fail" and "same size but other content" in store_line["detail"]
    assert "--rebuild" in store_line["fix"]
    [content] = [c for c in checks if c["key"] == "integrity" and c["status"] == "fail"]
    assert str(chunk) in content["detail"]
    # after --rebuild the new text is served
    assert cli.main(["index", "build", "--corpus", str(corpus_dir), "--retriever", "BM25", "--rebuild"]) == 0
    capsys.readouterr()
    store = open_corpus_store(resolve_corpus(str(corpus_dir), None))
    assert store.get([500])[0]["content"].startswith("snippet 500 about asthma")
    store.close()


def test_edit_with_mtime_set_back_is_still_refused(tmp_path):
    corpus_dir = big_corpus(tmp_path / "big")
    chunk = corpus_dir / "chunk" / "big.jsonl"
    open_corpus_store(resolve_corpus(str(corpus_dir), None)).close()
    st = chunk.stat()
    rewrite_line(chunk, 500, "renal", "hepat")
    os.utime(chunk, ns=(st.st_atime_ns, st.st_mtime_ns))  # size, mtime and inode as recorded; ctime is not
    assert (chunk.stat().st_size, chunk.stat().st_mtime_ns, chunk.stat().st_ino) == \
        (st.st_size, st.st_mtime_ns, st.st_ino)
    with pytest.raises(StoreError, match="same size but other content"):
        open_corpus_store(resolve_corpus(str(corpus_dir), None))


def test_appended_or_removed_file_is_refused(tmp_path):
    corpus_dir = big_corpus(tmp_path / "big")
    open_corpus_store(resolve_corpus(str(corpus_dir), None)).close()
    extra = corpus_dir / "chunk" / "more.jsonl"
    extra.write_text(json.dumps({"id": "m0", "title": "M", "content": "more"}) + "\n")
    with pytest.raises(StoreError, match="chunk files added: more.jsonl"):
        open_corpus_store(resolve_corpus(str(corpus_dir), None))
    extra.unlink()
    with open(corpus_dir / "chunk" / "big.jsonl", "a") as f:
        f.write(json.dumps({"id": "x", "title": "X", "content": "appended"}) + "\n")
    with pytest.raises(StoreError, match=r"big.jsonl has 546,\d+ bytes, 546,000 when the store was built"):
        open_corpus_store(resolve_corpus(str(corpus_dir), None))


def test_copy_keeps_store_and_indexes_valid_and_records_the_new_stat_once(tmp_path, caplog):
    from medret import clear_cache, get_retriever

    a = big_corpus(tmp_path / "a")
    ra = get_retriever(corpus_name=str(a), retriever_name="BM25")
    expected = ra.retrieve(["sepsis renal failure snippet 42"], topk=5, return_scores=True)
    clear_cache()
    b = tmp_path / "b"
    shutil.copytree(a, b)  # copy2: same mtime, new inode and ctime: what cp -a / rsync to another disk gives
    bm25_manifest = (b / "medret" / "bm25" / "manifest.json").read_bytes()
    old_records = orjson.loads((b / "medret" / "store" / "manifest.json").read_bytes())["chunk_files"]
    assert old_records[0]["ino"] != (b / "chunk" / "big.jsonl").stat().st_ino

    with caplog.at_level(logging.INFO, logger="medret.corpus.store"):
        got = get_retriever(corpus_name=str(b), retriever_name="BM25").retrieve(
            ["sepsis renal failure snippet 42"], topk=5, return_scores=True)
    clear_cache()
    assert got == expected  # same documents and scores: the BM25 index was reused, not refused or rebuilt
    assert (b / "medret" / "bm25" / "manifest.json").read_bytes() == bm25_manifest
    # one content check, at INFO: it passed, so there is nothing for the user to act on (issue 24 item 5)
    assert [r.levelno for r in caplog.records if "checking their content" in r.getMessage()] == [logging.INFO]
    new_records = orjson.loads((b / "medret" / "store" / "manifest.json").read_bytes())["chunk_files"]
    st = (b / "chunk" / "big.jsonl").stat()
    assert (new_records[0]["ino"], new_records[0]["ctime_ns"]) == (st.st_ino, st.st_ctime_ns)
    assert new_records[0]["sha256"] == old_records[0]["sha256"]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="medret.corpus.store"):
        DocStore.open(resolve_corpus(str(b), None).sources[0]).close()
    assert not [r for r in caplog.records if "checking their content" in r.getMessage()]  # cheap again


def test_store_of_an_older_medret_is_upgraded_and_its_indexes_kept(tmp_path):
    from medret import clear_cache, get_retriever

    corpus_dir = big_corpus(tmp_path / "big")
    chunk = corpus_dir / "chunk" / "big.jsonl"
    query = ["sepsis renal failure snippet 7"]
    expected = get_retriever(corpus_name=str(corpus_dir), retriever_name="BM25").retrieve(query, 3)
    clear_cache()
    # make the store and the BM25 index look as the previous medret wrote them: head/tail identity, no records
    store_m = corpus_dir / "medret" / "store" / "manifest.json"
    m = orjson.loads(store_m.read_bytes())
    legacy = fp.legacy_fingerprint([chunk])
    for key in ("chunk_files", "fingerprint_kind", "offsets_sha256"):
        m.pop(key)
    m.update(format=1, fingerprint=legacy)
    store_m.write_bytes(orjson.dumps(m))
    bm25_m = corpus_dir / "medret" / "bm25" / "manifest.json"
    b = orjson.loads(bm25_m.read_bytes())
    b["store_checksum"] = legacy
    bm25_m.write_bytes(orjson.dumps(b))

    assert get_retriever(corpus_name=str(corpus_dir), retriever_name="BM25").retrieve(query, 3) == expected
    clear_cache()
    upgraded = orjson.loads(store_m.read_bytes())
    assert upgraded["fingerprint"] == legacy and upgraded["fingerprint_kind"] == fp.KIND_LEGACY
    assert upgraded["chunk_files"][0]["sha256"] == fp.hash_records([chunk])[0]["sha256"]
    # from now on a same-size edit is caught
    rewrite_line(chunk, 500, "sepsis", "asthma")
    with pytest.raises(StoreError, match="same size but other content"):
        open_corpus_store(resolve_corpus(str(corpus_dir), None))


def test_first_format_store_whose_chunk_file_was_edited_before_its_first_open_is_not_upgraded(tmp_path):
    """Issue 24 item 15: the first format's identity (size, first and last 64 KiB) cannot see a same-size edit in
    the middle; upgrading then recorded the edited file's hash as good, for good. The documents are now compared
    with the ones the store holds before anything is recorded."""
    corpus_dir = big_corpus(tmp_path / "big")
    chunk = corpus_dir / "chunk" / "big.jsonl"
    open_corpus_store(resolve_corpus(str(corpus_dir), None)).close()
    store_m = corpus_dir / "medret" / "store" / "manifest.json"
    m = orjson.loads(store_m.read_bytes())
    for key in ("chunk_files", "fingerprint_kind", "offsets_sha256"):
        m.pop(key)
    m.update(format=1, fingerprint=fp.legacy_fingerprint([chunk]))
    store_m.write_bytes(orjson.dumps(m))
    legacy_manifest = store_m.read_bytes()
    rewrite_line(chunk, 500, "sepsis", "asthma")
    assert fp.legacy_fingerprint([chunk]) == m["fingerprint"]  # invisible to the first format
    with pytest.raises(StoreError, match=r"changed since its document store was built \(the chunk files hold 1,000 "
                                         r"snippets whose text differs.*nothing was recorded.*--rebuild"):
        open_corpus_store(resolve_corpus(str(corpus_dir), None))
    assert store_m.read_bytes() == legacy_manifest  # not upgraded, not recorded as good
    with pytest.raises(StoreError, match="whose text differs"):  # and so refused again at the next open
        open_corpus_store(resolve_corpus(str(corpus_dir), None))


def test_content_identity_ignores_timestamps_and_inodes():
    recs = [{"name": "a.jsonl", "size": 3, "sha256": "ab", "mtime_ns": 1, "ctime_ns": 2, "ino": 3}]
    moved = [{**recs[0], "mtime_ns": 9, "ctime_ns": 9, "ino": 9}]
    edited = [{**recs[0], "sha256": "cd"}]
    assert fp.identity(recs) == fp.identity(moved) != fp.identity(edited)


def test_doctor_deep_hashes_content_whose_stat_did_not_change(tmp_path):
    """A recorded hash that no longer matches while every stat field does (e.g. a disk that flipped bits, or a
    tool that restored mtime, ctime and inode) is only visible to hashing: doctor hashes small corpora by default
    and every corpus with --deep."""
    corpus_dir = big_corpus(tmp_path / "big")
    open_corpus_store(resolve_corpus(str(corpus_dir), None)).close()
    store_m = corpus_dir / "medret" / "store" / "manifest.json"
    m = orjson.loads(store_m.read_bytes())
    m["chunk_files"][0]["sha256"] = "0" * 64
    store_m.write_bytes(orjson.dumps(m))
    open_corpus_store(resolve_corpus(str(corpus_dir), None)).close()  # the cheap check at open: stat unchanged
    out = subprocess.run([sys.executable, "-m", "medret", "doctor", "--corpus", str(corpus_dir), "--no-search",
                          "--deep", "--json"], capture_output=True, text=True, env={**os.environ})
    checks = json.loads(out.stdout)["checks"]
    assert out.returncode == 1
    [bad] = [c for c in checks if c["key"] == "integrity" and c["status"] == "fail"]
    assert "chunk files of big" in bad["title"] and "big.jsonl" in bad["detail"] and "--rebuild" in bad["fix"]
