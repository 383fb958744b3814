import json

import numpy as np
import pytest

from medret.corpus.registry import resolve_corpus
from medret.corpus.store import DocStore, UnionStore, open_corpus_store
from medret.errors import CorpusError, StoreError
from tests.conftest import TOY_DOCS, write_chunks


def test_store_returns_each_row_as_written(toy_corpus):
    corpus = resolve_corpus(str(toy_corpus), None)
    store = open_corpus_store(corpus)
    assert len(store) == len(TOY_DOCS)
    docs = store.get(range(len(TOY_DOCS)))
    expected_ids = [f"toy_a_{i}" for i in range(5)] + [f"toy_b_{i}" for i in range(3)]
    assert [d["id"] for d in docs] == expected_ids
    assert [(d["title"], d["content"]) for d in docs] == TOY_DOCS
    # out of order and repeated rows
    assert [d["id"] for d in store.get([7, 0, 7])] == ["toy_b_2", "toy_a_0", "toy_b_2"]
    assert store.row_of("toy_b", 1) == 6
    assert store.files == [("toy_a", 5), ("toy_b", 3)]


def test_store_is_memory_mapped_and_built_once(toy_corpus):
    corpus = resolve_corpus(str(toy_corpus), None)
    store = open_corpus_store(corpus)
    folder = corpus.sources[0].store_dir
    mtime = (folder / "manifest.json").stat().st_mtime_ns
    again = open_corpus_store(corpus)
    assert (folder / "manifest.json").stat().st_mtime_ns == mtime  # not rebuilt
    assert isinstance(again._offsets, np.memmap)
    store.close()


def test_stale_store_is_refused_with_rebuild_hint(toy_corpus):
    corpus = resolve_corpus(str(toy_corpus), None)
    open_corpus_store(corpus).close()
    with open(toy_corpus / "chunk" / "toy_b.jsonl", "a") as f:
        f.write(json.dumps({"id": "toy_b_3", "title": "New", "content": "An added snippet."}) + "\n")
    with pytest.raises(StoreError, match="changed since its document store was built.*--rebuild"):
        open_corpus_store(resolve_corpus(str(toy_corpus), None))


def test_crash_during_build_leaves_no_store(toy_corpus):
    bad = toy_corpus / "chunk" / "toy_c.jsonl"
    bad.write_text('{"id": "x", "title": "T", "content": "fine"}\n{not json}\n')
    corpus = resolve_corpus(str(toy_corpus), None)
    with pytest.raises(CorpusError, match=r"toy_c.jsonl:2 is not valid JSON"):
        open_corpus_store(corpus)
    assert not corpus.sources[0].store_dir.exists()
    assert not any(p.name.startswith(".store.tmp") for p in corpus.sources[0].artifact_dir.iterdir())


def test_union_store_offsets_rows_per_source(tmp_path):
    db = tmp_path / "db"
    write_chunks(db / "textbooks", {"Anatomy": TOY_DOCS[:3]})
    write_chunks(db / "statpearls", {"article": TOY_DOCS[3:]})
    corpus = resolve_corpus("MedText", db)
    assert [s.name for s in corpus.sources] == ["textbooks", "statpearls"]  # MedRAG's order
    store = open_corpus_store(corpus)
    assert isinstance(store, UnionStore) and len(store) == len(TOY_DOCS)
    assert [d["id"] for d in store.get([4, 0, 3])] == ["article_1", "Anatomy_0", "article_0"]
    assert [(d["title"], d["content"]) for _, b in store.iter_batches(3) for d in b] == TOY_DOCS
    assert store.row_of("article", 2) == 5


def test_searchr1_jsonl_is_read(tmp_path):
    path = tmp_path / "wiki.jsonl"
    path.write_text(json.dumps({"id": "0", "contents": '"Sepsis"\nA life-threatening organ dysfunction.'}) + "\n")
    store = open_corpus_store(resolve_corpus(str(path), None))
    assert store.get([0]) == [{"id": "0", "title": "Sepsis", "content": "A life-threatening organ dysfunction."}]


def test_lookups_do_not_grow_memory_with_corpus_text(tmp_path):
    # 20,000 snippets of ~2 KB (40 MB of text): opening the store and reading every row in random order must
    # not pull the text into the process (a memory map of docs.bin would add its touched pages to RSS).
    import psutil

    filler = "x" * 2000
    write_chunks(tmp_path / "big", {"big": [("T", f"{i} {filler}") for i in range(20_000)]})
    corpus = resolve_corpus(str(tmp_path / "big"), None)
    open_corpus_store(corpus).close()
    proc = psutil.Process()
    before = proc.memory_info().rss
    store = DocStore.open(corpus.sources[0])
    rows = np.random.default_rng(0).permutation(20_000)
    for i in range(0, len(rows), 1000):
        docs = store.get(rows[i:i + 1000])
        assert docs[0]["content"].startswith(f"{rows[i]} ")
    grown_mb = (proc.memory_info().rss - before) / 2**20
    assert grown_mb < 10, f"reading every row grew RSS by {grown_mb:.1f} MB"


@pytest.mark.parametrize("records", [[None], "x", [{"name": "toy_a.jsonl", "size": "12", "sha256": "ab"}]],
                         ids=["null", "string", "size-string"])
def test_store_manifest_with_malformed_chunk_records_is_refused_with_one_line(toy_corpus, records):
    """Issue 24 item 18: ``chunk_files: [null]`` gave a raw TypeError at open."""
    import orjson

    corpus = resolve_corpus(str(toy_corpus), None)
    open_corpus_store(corpus).close()
    manifest = corpus.sources[0].store_dir / "manifest.json"
    m = orjson.loads(manifest.read_bytes())
    m["chunk_files"] = records
    manifest.write_bytes(orjson.dumps(m))
    before = manifest.read_bytes()
    with pytest.raises(StoreError, match=r"manifest.json is damaged \(chunk_files holds .*expected records with a "
                                         r"name, a size and a sha256\); delete .* and build it again"):
        open_corpus_store(corpus)
    assert manifest.read_bytes() == before


def _row_bytes(store_dir, row):
    offsets = np.load(store_dir / "offsets.npy")
    return int(offsets[row]), int(offsets[row + 1])


def test_same_size_forged_bytes_are_refused_when_the_row_is_read(toy_corpus):
    """Issue 24 item 17: a row edited in docs.bin at the same size was served (only `doctor --deep` could tell)."""
    corpus = resolve_corpus(str(toy_corpus), None)
    store = open_corpus_store(corpus)
    expected = store.get(range(len(store)))
    store.close()
    docs = corpus.sources[0].store_dir / "docs.bin"
    s, e = _row_bytes(docs.parent, 2)
    data = bytearray(docs.read_bytes())
    assert b"Heart failure" in data[s:e]
    data[s:e] = bytes(data[s:e]).replace(b"Heart failure", b"Heart FAILURE")
    with open(docs, "r+b") as f:  # in place: same size, same inode
        f.write(data)
    store = open_corpus_store(corpus)  # rows 0 and n-1, read at open, are intact
    try:
        with pytest.raises(StoreError, match=rf"docs.bin is damaged: row 2 \(bytes {s}..{e}\) is not what was "
                                             r"stored \(its checksum in row_sums.npy differs"):
            store.get([0, 2])
        others = [r for r in range(len(store)) if r != 2]
        assert store.get(others) == [expected[r] for r in others]  # the other rows are still served
    finally:
        store.close()
    from medret.config import EngineOptions
    from medret.doctor.data import check_store_and_indexes

    [line] = [c for c in check_store_and_indexes(EngineOptions(corpus_name=str(toy_corpus)))[0] if c.key == "store"]
    assert "each row checked against its checksum when read" in line.detail


def test_swapped_rows_are_refused_when_read(toy_corpus):
    corpus = resolve_corpus(str(toy_corpus), None)
    store = open_corpus_store(corpus)
    n = len(store)
    store.close()
    folder = corpus.sources[0].store_dir
    data = (folder / "docs.bin").read_bytes()
    offsets = np.load(folder / "offsets.npy")
    rows = [data[offsets[i]:offsets[i + 1]] for i in range(n)]
    rows[1], rows[3] = rows[3], rows[1]  # docs.bin and offsets.npy rewritten consistently, rows 1 and 3 swapped
    (folder / "docs.bin").write_bytes(b"".join(rows))
    np.save(folder / "offsets.npy", np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.uint64))
    store = open_corpus_store(corpus)
    try:
        for r in (1, 3):
            with pytest.raises(StoreError, match=rf"row {r} .* is not what was stored"):
                store.get([r])
        assert [d["id"] for d in store.get([0, 2, 4])] == ["toy_a_0", "toy_a_2", "toy_a_4"]
    finally:
        store.close()


def test_store_without_row_checksums_is_read_unchecked(toy_corpus):
    """A store built before the checksums existed: read as before (doctor says its rows are not checked)."""
    import orjson

    corpus = resolve_corpus(str(toy_corpus), None)
    open_corpus_store(corpus).close()
    folder = corpus.sources[0].store_dir
    m = orjson.loads((folder / "manifest.json").read_bytes())
    del m["row_sums"], m["row_sums_sha256"]
    (folder / "manifest.json").write_bytes(orjson.dumps(m))
    (folder / "row_sums.npy").unlink()
    store = open_corpus_store(corpus)
    try:
        assert not store.checks_rows and store.get([1])[0]["id"] == "toy_a_1"
    finally:
        store.close()
    from medret.config import EngineOptions
    from medret.doctor.data import check_store_and_indexes

    [line] = [c for c in check_store_and_indexes(EngineOptions(corpus_name=str(toy_corpus)))[0] if c.key == "store"]
    assert line.status == "ok" and "rows are not checked when read" in line.detail and "--rebuild" in line.detail
    m["row_sums"] = "row_sums.npy"
    (folder / "manifest.json").write_bytes(orjson.dumps(m))
    with pytest.raises(StoreError, match=r"row_sums.npy is missing; delete .* and build it again"):
        open_corpus_store(corpus)
