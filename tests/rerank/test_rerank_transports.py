"""The rerank stage over HTTP (a real `medret serve --reranker FOLDER --rerank-depth 10` on loopback) and through
Ray (a real local cluster, a sharded actor included): the same answer as MedCPT's published usage (the reference)."""
from __future__ import annotations

import uuid

import pytest
import requests

from medret import get_retriever
from medret.api import Retriever
from medret.config import RetrieverConfig
from tests.rerank.reference import QUERIES, assert_same

pytestmark = pytest.mark.integration


def first_stage(queries, depth, **kw):
    return [[h["document"] for h in row] for row in get_retriever(**kw).retrieve(queries, depth, True)["result"]]


def test_served_reranker_equals_the_reference(serve_process, cross_encoder_dir, reference):
    p = serve_process("--corpus", "sample", "--retriever", "BM25", "--reranker", str(cross_encoder_dir),
                      "--rerank-depth", "10")
    base = p.wait_address(120)
    expected = reference.rerank(QUERIES, first_stage(QUERIES, 10, corpus_name="sample", retriever_name="BM25"), 3)
    remote = Retriever(RetrieverConfig(backend="http", url=base + "/retrieve", timeout=120))
    assert_same(remote.retrieve(QUERIES, 3, True), expected)
    health = requests.get(base + "/health", timeout=30).json()
    assert health == {"status": "ok", "reranker": cross_encoder_dir.name, "rerank_depth": 10}
    info = requests.get(base + "/", timeout=30).json()
    assert (info["reranker"], info["rerank_depth"]) == (cross_encoder_dir.name, 10)
    r = requests.post(base + "/retrieve", json={"queries": QUERIES, "topk": 11}, timeout=30)
    assert r.status_code == 400 and r.json()["field"] == "topk"
    assert "topk=11 is more than rerank_depth=10" in r.json()["error"]


@pytest.fixture
def job(monkeypatch):
    jid = f"t{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("MEDRET_RAY_JOB", jid)
    return jid


def test_ray_actor_reranks_like_the_reference(ray_cluster, job, cross_encoder_dir, reference):
    from medret.transports.ray import kill_actors

    kw = dict(reranker=str(cross_encoder_dir), rerank_depth=10, backend="ray", ray_address=ray_cluster["address"],
              timeout=180)
    r = get_retriever("sample", "BM25", **kw)
    try:
        expected = reference.rerank(QUERIES, first_stage(QUERIES, 10, corpus_name="sample", retriever_name="BM25"),
                                    3)
        assert_same(r.retrieve(QUERIES, 3, True), expected)
        assert r.info()["reranker"] == cross_encoder_dir.name
    finally:
        kill_actors(r.config)


def test_sharded_ray_actor_reranks_like_the_reference(ray_cluster, job, toy_corpus, tiny_bert_dir,
                                                       cross_encoder_dir, reference):
    from medret.transports.ray import kill_actors

    queries = ["sepsis in the elderly", "kidney injury creatinine", "stroke risk", "insulin and fluids"]
    base = dict(corpus_name=str(toy_corpus), retriever_name=str(tiny_bert_dir), pooling="cls", device="cpu")
    cands = first_stage(queries, 6, **base)  # builds the index here, before the actors open it
    r = get_retriever(**base, reranker=str(cross_encoder_dir), rerank_depth=6, backend="ray",
                      ray_address=ray_cluster["address"], ray_shards=2, timeout=180)
    try:
        assert_same(r.retrieve(queries, 4, True), reference.rerank(queries, cands, 4))
        assert len(r.info()["ray"]["shards"][0]) == 2  # one index, split over two shard actors
    finally:
        kill_actors(r.config)
