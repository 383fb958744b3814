"""The rerank stage in-process: a cross-encoder orders each query's own first-stage candidates, exactly as MedCPT's
published usage does (tests/rerank/reference.py), with BM25, a dense folder, fusion and a sharded index as the
first stage; bad values are refused by name."""
from __future__ import annotations

import numpy as np
import pytest

from medret import get_retriever
from medret.cli import main
from medret.config import RetrieverConfig
from medret.engine import Engine
from medret.errors import ConfigError, QueryError
from medret.index.searchers import Shards
from medret.index.sharded import LocalShardHost
from tests.rerank.reference import QUERIES, assert_same, save_cross_encoder


def first_stage(retriever, queries, depth=10):
    return [[h["document"] for h in row] for row in retriever.retrieve(queries, depth, True)["result"]]


def test_bm25_then_cross_encoder_equals_the_reference(cross_encoder_dir, reference):
    r = get_retriever("sample", "BM25", reranker=str(cross_encoder_dir), rerank_depth=10)
    got = r.retrieve(QUERIES, topk=3, return_scores=True)
    expected = reference.rerank(QUERIES, first_stage(get_retriever("sample", "BM25"), QUERIES), 3)
    assert_same(got, expected)
    # the cross-encoder reorders: for some query its top 3 is not BM25's top 3 (else the test proves nothing)
    bm25 = first_stage(get_retriever("sample", "BM25"), QUERIES, 3)
    assert any([h["document"] for h in g] != b for g, b in zip(got["result"], bm25))
    assert r.retrieve(QUERIES, topk=3, return_scores=False)["result"] == [[h["document"] for h in e]
                                                                          for e in expected]
    assert [[h.id for h in row] for row in r.search(QUERIES, 2)] == [[h["document"]["id"] for h in e[:2]]
                                                                      for e in expected]
    info = r.info()
    assert (info["reranker"], info["rerank_depth"]) == (cross_encoder_dir.name, 10)


def test_each_query_is_scored_over_its_own_candidates_only(cross_encoder_dir, reference):
    """Search-R1's rerank server pairs every query with every query's candidates; medret must not: the reference
    per query is what it answers, and the cross-paired answer (computed here) differs from it."""
    queries = QUERIES[:4]
    r = get_retriever("sample", "BM25", reranker=str(cross_encoder_dir), rerank_depth=5)
    got = r.retrieve(queries, topk=3, return_scores=True)
    cands = first_stage(get_retriever("sample", "BM25"), queries, 5)
    assert_same(got, reference.rerank(queries, cands, 3))
    for row, own in zip(got["result"], cands):
        assert all(h["document"] in own for h in row)
    cross = reference.cross_paired(queries, cands, 3)
    assert [[h["document"]["id"] for h in row] for row in cross] != [[h["document"]["id"] for h in row]
                                                                     for row in got["result"]]
    # the batch answers each query as it would alone (scores to float rounding: other batches, other padding)
    for q, row in zip(queries, got["result"]):
        assert_same(r.retrieve([q], topk=3, return_scores=True), [row])


def test_duplicate_queries_are_scored_once_and_answered_each(cross_encoder_dir, reference):
    config = RetrieverConfig(corpus_name="sample", retriever_name="BM25", reranker=str(cross_encoder_dir),
                             rerank_depth=4)
    engine = Engine(config)
    try:
        pairs = []
        engine.reranker.model.register_forward_hook(lambda m, args, kw, out: pairs.append(len(kw["input_ids"])),
                                                    with_kwargs=True)
        batch = [QUERIES[0], QUERIES[1], QUERIES[0], QUERIES[0]]
        rows = engine.scored(batch, 2)
        assert sum(pairs) == 2 * 4  # two distinct queries x depth 4
        assert rows[0] == rows[2] == rows[3] and rows[0] != rows[1]
        cands = first_stage(get_retriever("sample", "BM25"), QUERIES[:2], 4)
        assert_same({"result": rows}, [reference.rerank(QUERIES[:2], cands, 2)[i] for i in (0, 1, 0, 0)])
    finally:
        engine.close()


def test_ties_keep_the_first_stage_order(tmp_path, make_tiny_bert):
    """A cross-encoder whose head is zero gives every pair the same logit: the answer is the first stage's."""
    import torch
    from transformers import AutoModelForSequenceClassification

    folder = save_cross_encoder(tmp_path / "flat", make_tiny_bert)
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.fill_(0.25)
    model.save_pretrained(folder)
    got = get_retriever("sample", "BM25", reranker=str(folder), rerank_depth=10).retrieve(QUERIES, 10, True)
    for row, bm25 in zip(got["result"], first_stage(get_retriever("sample", "BM25"), QUERIES, 10)):
        assert [h["document"] for h in row] == bm25
        assert [h["score"] for h in row] == pytest.approx([0.25] * len(bm25))


@pytest.mark.parametrize("layout", ["dense", "fusion", "sharded"])
def test_any_first_stage(layout, toy_corpus, tiny_bert_dir, cross_encoder_dir, reference):
    """A local dense folder, BM25+folder fusion, and the folder's index split over two shard workers."""
    name = f"BM25+{tiny_bert_dir}" if layout == "fusion" else str(tiny_bert_dir)
    base = dict(corpus_name=str(toy_corpus), retriever_name=name, pooling="cls")
    queries = ["sepsis in the elderly", "kidney injury creatinine", "stroke risk", "insulin and fluids"]
    plain = Engine(RetrieverConfig(**base))
    try:
        cands = [[item["document"] for item in row] for row in plain.scored(queries, 6)]
    finally:
        plain.close()
    shards = Shards(2, LocalShardHost()) if layout == "sharded" else None
    engine = Engine(RetrieverConfig(**base, reranker=str(cross_encoder_dir), rerank_depth=6), shards=shards)
    try:
        if shards is not None:
            assert len(engine.sharded()) == 1
        assert_same({"result": engine.scored(queries, 4)}, reference.rerank(queries, cands, 4))
    finally:
        engine.close()


def test_search_r1_article_format(tmp_path, cross_encoder_dir, reference):
    """reranker_format='searchr1': the article is Search-R1's '(Title: "<title>") <text>'."""
    got = get_retriever("sample", "BM25", reranker=str(cross_encoder_dir), reranker_format="searchr1",
                        rerank_depth=5).retrieve(QUERIES[:2], 5, True)
    cands = first_stage(get_retriever("sample", "BM25"), QUERIES[:2], 5)
    for q, row, docs in zip(QUERIES[:2], got["result"], cands):
        arts = [f'(Title: {d["contents"].partition(chr(10))[0]}) {d["contents"].partition(chr(10))[2]}' for d in docs]
        import torch

        with torch.no_grad():
            enc = reference.tokenizer([[q, a] for a in arts], truncation=True, padding=True, return_tensors="pt",
                                      max_length=512)
            s = reference.model(**enc).logits.squeeze(dim=1).numpy()
        order = np.argsort(-s, kind="stable")
        assert [h["document"] for h in row] == [docs[j] for j in order]
        np.testing.assert_allclose([h["score"] for h in row], s[order], atol=1e-3)


# ------------------------------------------------------------------------------------------------ bad values


@pytest.mark.parametrize("depth,words", [(0, "rerank_depth=0 is invalid: a positive whole number up to 1000"),
                                         (10**6, "rerank_depth=1000000 is invalid: a positive whole number up to 1000"),
                                         (-3, "rerank_depth=-3 is invalid: a positive whole number up to 1000"),
                                         (2.5, "rerank_depth=2.5 is invalid: expected a whole number")])
def test_bad_depth_is_refused_by_name(depth, words, cross_encoder_dir):
    with pytest.raises(ConfigError, match=words):
        get_retriever("sample", "BM25", reranker=str(cross_encoder_dir), rerank_depth=depth)


def test_topk_beyond_the_depth_is_refused(cross_encoder_dir):
    r = get_retriever("sample", "BM25", reranker=str(cross_encoder_dir), rerank_depth=4)
    for call in (lambda: r.retrieve(QUERIES, topk=5), lambda: r.search(QUERIES, 5)):
        with pytest.raises(QueryError, match=r"topk=5 is more than rerank_depth=4.*topk <= 4"):
            call()
    with pytest.raises(QueryError, match="rerank_depth=4"):
        r.transport.engine.scored(QUERIES, 5)  # the engine guards itself too
    assert len(r.retrieve(QUERIES, topk=4)["result"][0]) == 4


def test_a_model_that_is_not_a_cross_encoder_is_refused(tmp_path, tiny_bert_dir, make_tiny_bert):
    with pytest.raises(ConfigError, match=r"reranker=.* is not a cross-encoder: .*architectures=\['BertModel'\]"):
        get_retriever("sample", "BM25", reranker=str(tiny_bert_dir))
    two = save_cross_encoder(tmp_path / "two", make_tiny_bert, num_labels=2)
    with pytest.raises(ConfigError, match="it has 2 labels; a cross-encoder gives one score per pair"):
        get_retriever("sample", "BM25", reranker=str(two))
    with pytest.raises(ConfigError, match="reranker='' is invalid"):
        get_retriever("sample", "BM25", reranker="")
    with pytest.raises(ConfigError, match="reranker_like='e5' is invalid: choose one of MedCPT-Cross-Encoder"):
        get_retriever("sample", "BM25", reranker=str(two), reranker_like="e5")


def test_the_old_rerank_option_is_refused_naming_refine_factor(capsys):
    with pytest.raises(ConfigError, match=r"rerank=5 is no longer an option: it was renamed refine_factor"):
        get_retriever("sample", "BM25", rerank=5)
    with pytest.raises(SystemExit) as e:
        main(["search", "sepsis", "--rerank", "5"])
    assert e.value.code == 2
    assert "--rerank is no longer an option: it was renamed --refine-factor (give --refine-factor 5)" in \
        capsys.readouterr().err
    assert RetrieverConfig.from_mapping({"refine_factor": 5}).refine_factor == 5
    from medret.config import validate_retriever_block

    with pytest.raises(ConfigError, match="'rerank' was renamed 'refine_factor'"):  # Search-R1's retriever block
        validate_retriever_block({"backend": "local", "rerank": 5})


def test_search_r1_block_with_a_reranker(cross_encoder_dir, reference):
    """The trainer's `retriever` block (+retriever.reranker=..., +retriever.rerank_depth=...) reaches the stage."""
    from medret.integrations.searchr1_runtime import batch_search

    block = {"backend": "local", "corpus_name": "sample", "retriever_name": "BM25", "reranker": str(cross_encoder_dir),
             "rerank_depth": "10", "topk": 3}  # hydra may hand numbers over as strings
    expected = reference.rerank(QUERIES, first_stage(get_retriever("sample", "BM25"), QUERIES), 3)
    assert_same(batch_search(block, QUERIES), expected)


def test_the_reranker_is_part_of_the_identity(cross_encoder_dir):
    from medret.transports.ray import actor_base_name

    plain = RetrieverConfig(corpus_name="sample", retriever_name="BM25")
    names = {actor_base_name(plain, "j"),
             actor_base_name(plain.replace(reranker=str(cross_encoder_dir)), "j"),
             actor_base_name(plain.replace(reranker=str(cross_encoder_dir), rerank_depth=20), "j"),
             actor_base_name(plain.replace(reranker=str(cross_encoder_dir), reranker_format="searchr1"), "j")}
    assert len(names) == 4


@pytest.mark.parametrize("fp16,dtype", [(None, "float16"), (False, "float32")])
def test_the_cross_encoder_runs_on_the_retrievers_device_in_fp16_on_cuda(fp16, dtype, cross_encoder_dir,
                                                                          monkeypatch):
    """On CUDA the cross-encoder is put on the retriever's device, in fp16 unless fp16=False (the device spy of
    tests/index/test_sharded_engine.py records medret's placements and runs them on the CPU; nothing is searched)."""
    from tests.index.test_sharded_engine import DeviceSpy

    spy = DeviceSpy(monkeypatch)
    engine = Engine(RetrieverConfig(corpus_name="sample", retriever_name="BM25", reranker=str(cross_encoder_dir),
                                    device="cuda", fp16=fp16))
    try:
        assert engine.info()["device"] == engine.reranker.device == "cuda:0"
        assert spy.modules == ["cuda:0"]
        assert str(engine.reranker.model.dtype) == f"torch.{dtype}"
    finally:
        engine.close()
