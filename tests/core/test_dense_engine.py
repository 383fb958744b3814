"""The dense path end to end, against a brute-force computation with the model loaded independently."""
import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from medret import get_retriever
from medret.errors import DeviceError
from tests.conftest import TOY_DOCS, write_chunks


def brute_force(model_dir, queries, docs, k):
    tok, model = AutoTokenizer.from_pretrained(model_dir), AutoModel.from_pretrained(model_dir).eval()

    def cls(texts):
        with torch.no_grad():
            enc = tok(texts, padding=True, truncation=True, max_length=512, return_tensors="pt")
            return model(**enc).last_hidden_state[:, 0].numpy()

    q = cls(queries)
    # a local model folder is formatted like MedRAG's default: title and content joined
    d = cls([f"{t}. {c}" for t, c in docs])
    s = q @ d.T
    return [sorted(range(len(docs)), key=lambda j: -s[i, j])[:k] for i in range(len(queries))], s


def test_dense_search_equals_brute_force(toy_corpus, tiny_bert_dir):
    queries = ["sepsis in the elderly", "kidney injury", "stroke risk", "insulin"]
    r = get_retriever(str(toy_corpus), str(tiny_bert_dir), pooling="cls")
    hits = r.search(queries, 4)
    ref_rows, s = brute_force(tiny_bert_dir, queries, TOY_DOCS, 4)
    ids = [f"toy_a_{i}" for i in range(5)] + [f"toy_b_{i}" for i in range(3)]
    for i, row in enumerate(hits):
        np.testing.assert_allclose([h.score for h in row], [s[i, j] for j in ref_rows[i]], rtol=1e-4, atol=1e-4)
        assert [h.id for h in row] == [ids[j] for j in ref_rows[i]]


def test_multi_source_dense_merges_exactly(tmp_path, tiny_bert_dir):
    db = tmp_path / "db"
    write_chunks(db / "textbooks", {"books": TOY_DOCS[:4]})
    write_chunks(db / "statpearls", {"pearls": TOY_DOCS[4:]})
    write_chunks(tmp_path / "one", {"all": TOY_DOCS})
    queries = ["sepsis mortality", "heart failure", "delirium in icu"]
    split = get_retriever("MedText", str(tiny_bert_dir), db_dir=str(db), pooling="cls").search(queries, 5)
    whole = get_retriever(str(tmp_path / "one"), str(tiny_bert_dir), pooling="cls").search(queries, 5)
    for a, b in zip(split, whole):
        assert [h.title for h in a] == [h.title for h in b]
        np.testing.assert_allclose([h.score for h in a], [h.score for h in b], rtol=1e-5)


def test_rrf_of_bm25_and_dense_follows_the_formula(toy_corpus, tiny_bert_dir):
    q = ["sepsis in elderly icu patients"]
    bm25 = get_retriever(str(toy_corpus), "BM25").search(q, 8)[0]
    dense = get_retriever(str(toy_corpus), str(tiny_bert_dir), pooling="cls").search(q, 8)[0]
    fused = get_retriever(str(toy_corpus), f"BM25+{tiny_bert_dir}", pooling="cls", rrf_k=100).search(q, 3)[0]
    score = {}
    for ranking in (bm25, dense):
        for rank, h in enumerate(ranking, 1):
            score[h.id] = score.get(h.id, 0) + 1 / (100 + rank)
    expected = sorted(score, key=lambda i: -score[i])[:3]
    assert [h.id for h in fused] == expected
    np.testing.assert_allclose([h.score for h in fused], [score[i] for i in expected])


def test_cuda_requested_but_not_visible_is_an_error(toy_corpus, tiny_bert_dir, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(DeviceError, match="CUDA"):
        get_retriever(str(toy_corpus), str(tiny_bert_dir), pooling="cls", device="cuda")
    r = get_retriever(str(toy_corpus), str(tiny_bert_dir), pooling="cls", device="cuda", allow_cpu_fallback=True)
    assert r.info()["device"] == "cpu"


def test_rrf_takes_only_bm25_matches_so_a_query_without_indexed_terms_is_the_dense_ranking(toy_corpus,
                                                                                            tiny_bert_dir):
    """BM25 returns only snippets holding a query term (as pyserini): with none, it gives RRF nothing, so the
    fusion is the dense ranking alone with scores 1/(rrf_k + rank) — no arbitrary zero-score BM25 snippets
    (the lowest rows) pushed up by fusion."""
    q = ["zebra quokka"]  # no word of the toy corpus
    assert get_retriever(str(toy_corpus), "BM25").search(q, 5) == [[]]
    dense = get_retriever(str(toy_corpus), str(tiny_bert_dir), pooling="cls").search(q, 5)[0]
    fused = get_retriever(str(toy_corpus), f"BM25+{tiny_bert_dir}", pooling="cls", rrf_k=100).search(q, 5)[0]
    assert [h.id for h in fused] == [h.id for h in dense]
    np.testing.assert_allclose([h.score for h in fused], [1 / (100 + r) for r in range(1, 6)])
