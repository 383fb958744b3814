"""The streaming BM25 builder against bm25s's own indexing (BM25.index(Tokenized(...)) + save) of the same tokens.

The reference is built here, independently of build_bm25, by tokenizing every snippet with the same bm25s
tokenizer into lists and letting bm25s index and save them. The streaming build must write the same files
(byte for byte), so BM25Index must give the same scores and the same top-10 rows.
"""
from __future__ import annotations

from pathlib import Path

import bm25s
import numpy as np
import orjson
import pytest
from bm25s.tokenization import Tokenized

import medret.index.bm25 as bm25_mod
from medret.corpus.registry import resolve_corpus
from medret.corpus.store import open_corpus_store
from medret.errors import IndexBuildError
from medret.index.bm25 import K1, METHOD, B, BM25Index, build_bm25, text_of
from tests.conftest import TOY_DOCS, write_chunks

BM25S_FILES = ("data.csc.index.npy", "indices.csc.index.npy", "indptr.csc.index.npy", "vocab.index.json",
               "params.index.json")


def reference_index(store, folder: Path) -> Path:
    """bm25s's own path: token id lists for all snippets, BM25.index(Tokenized), BM25.save."""
    tok = bm25_mod._tokenizer()
    texts = [text_of(d) for _, docs in store.iter_batches(1_000) for d in docs]
    ids = tok.tokenize(texts, update_vocab=True, return_as="ids", show_progress=False)
    model = bm25s.BM25(k1=K1, b=B, method=METHOD)
    model.index(Tokenized(ids=ids, vocab=tok.get_vocab_dict()), show_progress=False)
    model.save(str(folder), show_progress=False)
    (folder / "manifest.json").write_bytes(orjson.dumps({"rows": len(store), "store_checksum": store.checksum}))
    return folder


def assert_same_index(new: Path, ref: Path) -> None:
    for name in BM25S_FILES:
        assert (new / name).read_bytes() == (ref / name).read_bytes(), f"{name} differs from bm25s's"
    assert not [p.name for p in new.iterdir() if p.name.startswith("_build")], "scratch files left behind"


def assert_same_results(new: BM25Index, ref: BM25Index, queries: list[str], k: int = 10) -> None:
    n = int(new.manifest["rows"])
    new_ids, ref_ids = new.tokenize(queries), ref.tokenize(queries)
    assert new_ids == ref_ids  # same stems -> same column ids
    for q, ids in zip(queries, new_ids):
        s_new = new.model.get_scores_from_ids(ids) if ids else np.zeros(n, np.float32)
        s_ref = ref.model.get_scores_from_ids(ids) if ids else np.zeros(n, np.float32)
        np.testing.assert_allclose(s_new, s_ref, rtol=1e-6, atol=0, err_msg=q)
    sn, rn = new.search(queries, k)
    sr, rr = ref.search(queries, k)
    assert rn.tolist() == rr.tolist()
    np.testing.assert_allclose(sn, sr, rtol=1e-6, atol=0)


@pytest.fixture
def tricky_corpus(tmp_path) -> Path:
    """Toy docs plus a snippet with no indexable word (bm25s gives it the empty token), repeated terms,
    and unicode, over two chunk files."""
    extra = [("", "The and of it."), ("Sepsis sepsis", "Sepsis, sepsis and septic shock: sepsis again."),
             ("Ødem", "Ødem und Ödeme bei Herzinsuffizienz; œdème.")]
    return write_chunks(tmp_path / "tricky", {"a": TOY_DOCS[:4] + extra[:1], "b": extra[1:] + TOY_DOCS[4:]})


@pytest.mark.parametrize("batch_size,entry_chunk", [(10_000, 1 << 20), (3, 5), (1, 1)])
def test_toy_index_is_bm25s_index(tricky_corpus, tmp_path, monkeypatch, batch_size, entry_chunk):
    # small batches grow the vocabulary and document frequencies across batches; small entry chunks split
    # the second pass at every few documents
    monkeypatch.setattr(bm25_mod, "_ENTRY_CHUNK", entry_chunk)
    store = open_corpus_store(resolve_corpus(str(tricky_corpus), None))
    new = build_bm25(store, tmp_path / "new", batch_size=batch_size)
    ref = reference_index(store, tmp_path / "ref")
    assert_same_index(new, ref)
    manifest = orjson.loads((new / "manifest.json").read_bytes())
    assert manifest["rows"] == len(store) == len(TOY_DOCS) + 3
    assert manifest["store_checksum"] == store.checksum
    assert (manifest["k1"], manifest["b"], manifest["method"]) == (K1, B, METHOD)
    queries = ["sepsis mortality in elderly ICU patients", "kidney injury creatinine", "stroke risk",
               "Ödeme Herzinsuffizienz", "the and of", "zebra", "septic sepsis shock fluids"]
    assert_same_results(BM25Index(new), BM25Index(ref), queries, k=len(store))


def test_toy_scores_are_the_formula_for_a_repeated_term(tricky_corpus, tmp_path):
    # independent of bm25s: "sepsis" occurs 5 times in the 8-token snippet (row 5)
    store = open_corpus_store(resolve_corpus(str(tricky_corpus), None))
    index = BM25Index(build_bm25(store, tmp_path / "idx"))
    toks = index.tokenize([text_of(d) for d in store.get(range(len(store)))])
    lengths = np.array([len(t) or 1 for t in toks], dtype=np.float64)  # the empty snippet counts one token
    sepsis = index.tokenize(["sepsis"])[0][0]
    df = sum(sepsis in t for t in toks)
    idf = np.log(1 + (len(toks) - df + 0.5) / (df + 0.5))
    tf = toks[5].count(sepsis)
    assert tf == 5 and len(toks[5]) == 8
    expected = idf * tf / (tf + K1 * (1 - B + B * lengths[5] / lengths.mean()))
    scores, rows = index.search(["sepsis"], 1)
    assert rows.tolist() == [[5]]
    np.testing.assert_allclose(scores[0, 0], expected, rtol=1e-6)


def test_pubmedqa_index_is_bm25s_index(pubmedqa_corpus, pubmedqa_data, tmp_path):
    from medret.eval import pubmedqa

    store = open_corpus_store(resolve_corpus(str(pubmedqa_corpus), None))
    new = build_bm25(store, tmp_path / "new", batch_size=500)
    ref = reference_index(store, tmp_path / "ref")
    assert_same_index(new, ref)
    questions, _ = pubmedqa.queries_and_qrels(pubmedqa_data)
    assert len(questions) == 1000
    assert_same_results(BM25Index(new), BM25Index(ref), questions, k=10)


class _FailingStore:
    """A store whose second batch fails to read."""

    def __init__(self, store):
        self._store, self.checksum = store, store.checksum

    def __len__(self) -> int:
        return len(self._store)

    def iter_batches(self, batch_size):
        for i, item in enumerate(self._store.iter_batches(batch_size)):
            if i == 1:
                raise IndexBuildError("disk read failed")
            yield item


def test_failed_build_keeps_the_previous_index_and_leaves_no_scratch(tricky_corpus, tmp_path):
    store = open_corpus_store(resolve_corpus(str(tricky_corpus), None))
    folder = build_bm25(store, tmp_path / "idx")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(IndexBuildError, match="disk read failed"):
        build_bm25(_FailingStore(store), folder, batch_size=2)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    # the build lock file stays (deleting lock files breaks mutual exclusion), empty once nobody holds it
    assert sorted(p.name for p in tmp_path.iterdir()) == [".idx.lock", "idx", "tricky"]
    assert (tmp_path / ".idx.lock").stat().st_size == 0
