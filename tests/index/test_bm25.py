"""BM25 ranking against an independent computation of the Lucene BM25 formula."""
import math
import re

import numpy as np
import pytest
import Stemmer
from bm25s.stopwords import STOPWORDS_EN

from medret.corpus.registry import resolve_corpus
from medret.corpus.store import open_corpus_store
from medret.index.bm25 import B, K1, BM25Index, build_bm25
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
    np.testing.assert_allclose(scores[0], ref[rows[0]], rtol=1e-5, atol=1e-6)
    # the ranking is the reference order, ties broken by lower row
    expected = sorted(range(len(texts)), key=lambda i: (-round(ref[i], 5), i))
    assert rows[0].tolist() == expected


def test_unknown_words_score_zero_and_order_by_row(bm25):
    index, texts = bm25
    scores, rows = index.search(["zebra quokka"], 3)
    assert scores.tolist() == [[0.0, 0.0, 0.0]] and rows.tolist() == [[0, 1, 2]]


def test_topk_larger_than_corpus_returns_every_row(bm25):
    index, texts = bm25
    scores, rows = index.search(["sepsis"], 50)
    assert sorted(rows[0].tolist()) == list(range(len(texts)))
