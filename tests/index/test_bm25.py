"""BM25 ranking against an independent computation of the Lucene BM25 formula."""
import math
import re

import numpy as np
import pytest
import Stemmer
from bm25s.stopwords import STOPWORDS_EN

from medret.corpus.registry import resolve_corpus
from medret.corpus.store import open_corpus_store
from medret.index.bm25 import K1, B, BM25Index, build_bm25
from tests.conftest import TOY_DOCS

STEM = Stemmer.Stemmer("english")


def analyze(text: str) -> list[str]:
    words = re.findall(r"(?u)\b\w\w+\b", text.lower())
    return [STEM.stemWord(w) for w in words if w not in set(STOPWORDS_EN)]


def reference_scores(docs: list[str], query: str) -> np.ndarray:
    toks = [analyze(d) for d in docs]
    n, avg = len(docs), sum(map(len, toks)) / len(docs)
    out = np.zeros(n)
    for term in analyze(query):
        df = sum(term in t for t in toks)
        if df == 0:
            continue
        idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
        for i, t in enumerate(toks):
            tf = t.count(term)
            out[i] += idf * tf / (tf + K1 * (1 - B + B * len(t) / avg))
    return out


@pytest.fixture
def bm25(toy_corpus):
    store = open_corpus_store(resolve_corpus(str(toy_corpus), None))
    folder = build_bm25(store, toy_corpus / "bm25idx")
    return BM25Index(folder), [f"{t}. {c}" for t, c in TOY_DOCS]


@pytest.mark.parametrize("query", ["sepsis mortality in elderly ICU patients", "kidney injury creatinine",
                                   "stroke risk anticoagulation", "insulin and potassium for ketoacidosis"])
def test_scores_and_ranking_match_the_formula(bm25, query):
    index, texts = bm25
    ref = reference_scores(texts, query)
    scores, rows = index.search([query], len(texts))
    found = rows[0][rows[0] >= 0]
    np.testing.assert_allclose(scores[0][: len(found)], ref[found], rtol=1e-5, atol=1e-6)
    # the ranking is the reference order of the matching snippets, ties broken by lower row
    expected = sorted((i for i in range(len(texts)) if ref[i] > 0), key=lambda i: (-round(ref[i], 5), i))
    assert found.tolist() == expected and len(expected) > 0


def test_a_query_with_no_indexed_term_finds_nothing(bm25):
    """As pyserini's BM25 (Search-R1's): no snippet holds a query term, so nothing is returned (row -1), not
    the first k snippets with score 0."""
    index, texts = bm25
    scores, rows = index.search(["zebra quokka", "the and of"], 3)  # unknown words; stop words only
    assert rows.tolist() == [[-1, -1, -1]] * 2 and scores.tolist() == [[0.0, 0.0, 0.0]] * 2


def test_only_matching_snippets_are_returned(bm25):
    index, texts = bm25
    ref = reference_scores(texts, "sepsis")
    matching = sorted((i for i in range(len(texts)) if ref[i] > 0), key=lambda i: (-round(ref[i], 5), i))
    assert 0 < len(matching) < len(texts)
    scores, rows = index.search(["sepsis"], 50)  # topk larger than the corpus
    assert rows[0].tolist() == matching + [-1] * (len(texts) - len(matching))
    assert (scores[0][: len(matching)] > 0).all() and (scores[0][len(matching):] == 0).all()


@pytest.mark.parametrize("path,sparse,essential", [("distinct", 1e9, 0.0), ("maxscore", 0.0, 1e9),
                                                   ("dense", 0.0, 0.0)])
def test_posting_scorer_equals_bm25s_full_scores_on_a_tie_heavy_corpus(tmp_path, monkeypatch, path, sparse,
                                                                       essential):
    """Each way of scoring (forced by the share thresholds) must give bm25s's float32 scores bit for bit and
    the full sort's order (score descending, row ascending), including ties at the k-th place, repeated query
    words, words absent from the index and queries matching fewer than k snippets; and the reused buffers must
    not leak between queries. The MaxScore way must actually prune some queries here."""
    import medret.index.bm25 as bm25_mod
    from tests.conftest import write_chunks

    monkeypatch.setattr(bm25_mod, "SPARSE_POSTINGS", sparse)
    monkeypatch.setattr(bm25_mod, "ESSENTIAL_SHARE", essential)

    rng = np.random.default_rng(7)
    vocab = ["sepsis", "lactate", "shock", "kidney", "renal", "insulin", "stroke", "aspirin", "fever", "cough",
             "anemia", "ferritin", "warfarin", "heparin", "troponin"]
    # word i is in about 1 in (i + 1) snippets: common and rare words, so MaxScore has something to prune
    docs = [(f"Doc {i}", " ".join(w for j, w in enumerate(vocab) if rng.random() < 1 / (j + 1)) or "cough")
            for i in range(1500)]
    docs.append(("Rare", "quokka"))  # a word only one snippet has: fewer matches than k
    folder = write_chunks(tmp_path / "c", {"a": docs[:700], "b": docs[700:]})
    store = open_corpus_store(resolve_corpus(str(folder), None))
    index = BM25Index(build_bm25(store, folder / "bm25idx"))
    queries = [" ".join(rng.choice(vocab, size=int(rng.integers(1, 5)))) for _ in range(60)]
    queries += ["sepsis sepsis shock", "quokka", "quokka zebra", "zebra", "fever"]
    for k in (1, 10, 37):
        scores, rows = index.search(queries, k)
        for q, ids, s, r in zip(queries, index.tokenize(queries), scores, rows):
            full = (index.model.get_scores_from_ids(ids) if ids else np.zeros(len(store), np.float32))
            full = np.asarray(full, dtype=np.float32)
            # bm25s's order, matches only (score > 0), padded with row -1 / score 0 when fewer than k match
            expected = sorted((i for i in range(len(store)) if full[i] > 0), key=lambda i: (-full[i], i))[:k]
            pad = k - len(expected)
            assert r.tolist() == expected + [-1] * pad, (q, k)
            assert s.tobytes() == np.concatenate([full[expected], np.zeros(pad, np.float32)]).tobytes(), (q, k)
    counts = index._scorer.paths
    assert counts[path] > 0 and sum(v for key, v in counts.items() if key != "pruned") == counts[path]
    if path == "maxscore":
        assert counts["pruned"] > 0
    # the same batch again (buffers reused) answers the same
    again = index.search(queries, 10)
    first = index.search(queries, 10)
    assert np.array_equal(again[1], first[1]) and again[0].tobytes() == first[0].tobytes()


def test_query_tokenizer_shares_the_vocabulary_and_bounds_its_word_caches(bm25, monkeypatch):
    import medret.index.bm25 as bm25_mod

    index, texts = bm25
    assert index._tok.stem_to_sid is index.model.vocab_dict  # no copy of the index's vocabulary
    queries = ["sepsis mortality in elderly ICU patients", "kidney injury creatinine"]
    before = index.search(queries, 5)
    vocab = dict(index.model.vocab_dict)
    monkeypatch.setattr(bm25_mod, "WORD_CACHE_MAX", 10)
    for i in range(30):  # distinct unknown words fill the caches; past the cap they are cleared
        index.search([f"zzword{i} qqword{i} sepsis"], 3)
        assert len(index._tok.word_to_stem) <= 10 + 3
    after = index.search(queries, 5)
    assert before[1].tolist() == after[1].tolist() and before[0].tobytes() == after[0].tobytes()
    assert index.model.vocab_dict == vocab  # unknown query words never enter the index's vocabulary
