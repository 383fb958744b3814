"""Same inputs → the same JSON from the local and the http backend (BM25 and a tiny dense encoder)."""
from __future__ import annotations

import random

import orjson
import pytest
import requests

from medret import get_retriever
from medret.api import Retriever
from medret.config import RetrieverConfig


def check_identical(local: Retriever, srv, queries_pool, seed: int, n_batches: int, max_batch: int) -> int:
    """Random batches (with repeats); compare local vs the medret http client vs a plain POST. Returns #queries."""
    rng = random.Random(seed)
    remote = Retriever(RetrieverConfig(corpus_name="remote", backend="http", url=srv.url))
    total = 0
    for _ in range(n_batches):
        n = rng.randint(1, max_batch)
        queries = [rng.choice(queries_pool) for _ in range(n)]
        topk = rng.randint(1, 10)
        scores = rng.random() < 0.7
        expected = local.retrieve(queries, topk, scores)
        assert remote.retrieve(queries, topk, scores) == expected
        raw = requests.post(srv.url, json={"queries": queries, "topk": topk, "return_scores": scores}, timeout=60)
        assert raw.content == orjson.dumps(expected)  # byte-identical JSON
        assert remote.search(queries, topk) == local.search(queries, topk)  # typed hits too
        total += n
    return total


def pool_from_words(words, seed=0, n=200):
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(1, 7))) for _ in range(n)]


def test_toy_corpus_bm25(toy_corpus, serve_thread, serve_helpers):
    local = get_retriever(str(toy_corpus), "BM25")
    srv = serve_thread(RetrieverConfig(corpus_name=str(toy_corpus), retriever_name="BM25"))
    pool = pool_from_words(serve_helpers.WORDS, seed=1)
    assert check_identical(local, srv, pool, seed=11, n_batches=25, max_batch=30) > 0


def test_serve_corpus_bm25(serve_corpus, serve_thread, serve_helpers):
    local = get_retriever(str(serve_corpus), "BM25")
    srv = serve_thread(RetrieverConfig(corpus_name=str(serve_corpus), retriever_name="BM25"))
    check_identical(local, srv, pool_from_words(serve_helpers.WORDS, seed=2), seed=12, n_batches=25, max_batch=60)


def test_pubmedqa_bm25(pubmedqa_corpus, pubmedqa_data, serve_thread):
    from medret.eval.pubmedqa import queries_and_qrels

    questions, _ = queries_and_qrels(pubmedqa_data)
    local = get_retriever(str(pubmedqa_corpus), "BM25")
    srv = serve_thread(RetrieverConfig(corpus_name=str(pubmedqa_corpus), retriever_name="BM25"))
    check_identical(local, srv, questions, seed=13, n_batches=20, max_batch=120)


@pytest.mark.parametrize("corpus_fixture", ["toy_corpus", "serve_corpus"])
def test_tiny_bert_dense(request, corpus_fixture, tiny_bert_dir, serve_thread, serve_helpers):
    corpus = request.getfixturevalue(corpus_fixture)
    local = get_retriever(str(corpus), retriever_name=str(tiny_bert_dir), pooling="cls")
    assert local.info()["index"][0].startswith("dense")
    srv = serve_thread(RetrieverConfig(corpus_name=str(corpus), retriever_name=str(tiny_bert_dir), pooling="cls"))
    info = requests.get(srv.base + "/", timeout=30).json()
    assert info["index"] == local.info()["index"] and info["device"] == "cpu"
    # one request at a time: the server searches exactly the batch the local call searches
    check_identical(local, srv, pool_from_words(serve_helpers.WORDS, seed=3), seed=14, n_batches=15, max_batch=40)
