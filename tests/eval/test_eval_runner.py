"""Metrics, fusion and the eval runner against hand computation."""
import json
import math

import pytest

from medret import get_retriever
from medret.cli import main
from medret.eval.qrels import LabelledSet, pubmedqa_set
from medret.eval.runner import evaluate, fuse_rankings, score_rankings


def test_score_rankings_by_hand():
    ranked = [["a", "x", "b", "y"], ["x", "y", "z", "c"]]
    relevant = [{"a", "b", "c"}, {"c"}]
    m = score_rankings(ranked, relevant, ks=(1, 3))
    assert m["Recall@1"] == pytest.approx((1 / 3 + 0) / 2)
    assert m["Recall@3"] == pytest.approx((2 / 3 + 0) / 2)
    assert m["Hit@1"] == 0.5 and m["Hit@3"] == 0.5
    # capped recall: hits over min(k, |relevant|): query 1 has 1 hit in the top 1 (of min(1, 3) = 1)
    assert m["R_cap@1"] == pytest.approx((1 / 1 + 0) / 2)
    assert m["R_cap@3"] == pytest.approx((2 / 3 + 0) / 2)
    assert score_rankings([["a", "b", "x"]], [{"a", "b", "c", "d"}], ks=(2,))["R_cap@2"] == 1.0  # Recall@2: 0.5
    assert m["MRR"] == pytest.approx((1 + 1 / 4) / 2)
    # query 1: DCG = 1/log2(2) + 1/log2(4) = 1.5, IDCG (3 relevant) = 1 + 1/log2(3) + 1/2
    # query 2: DCG = 1/log2(5), IDCG = 1
    nd1 = 1.5 / (1 + 1 / math.log2(3) + 0.5)
    nd2 = 1 / math.log2(5)
    assert m["nDCG@10"] == pytest.approx((nd1 + nd2) / 2)


def test_rrf_fusion_by_hand():
    fused = fuse_rankings([[["a", "b", "c"]], [["c", "a", "d"]]], depth=4, rrf_k=60)
    # a: 1/61 + 1/62, c: 1/63 + 1/61, b: 1/62, d: 1/63
    assert fused == [["a", "c", "b", "d"]]


def test_evaluate_bm25_and_dense_with_fusion(toy_corpus, tiny_bert_dir):
    data = LabelledSet("toy", ("q1", "q2", "q3"), ("sepsis mortality elderly", "insulin potassium", "stroke risk"),
                       (frozenset({"toy_a_0", "toy_b_1"}), frozenset({"toy_b_2"}), frozenset({"toy_b_0"})))
    res = evaluate(data, str(toy_corpus), ["BM25", str(tiny_bert_dir)], ks=(1, 5), depth=8, pooling="cls")
    assert [r["retriever"] for r in res["rows"]][:2] == ["BM25", str(tiny_bert_dir)]
    assert res["rows"][2]["retriever"].startswith("RRF(")
    # independent: the same retrievers' rankings, scored with the metric definitions
    bm = [[h.id for h in row] for row in get_retriever(str(toy_corpus), "BM25").search(list(data.queries), 10)]
    de = [[h.id for h in row] for row in get_retriever(str(toy_corpus), str(tiny_bert_dir), pooling="cls")
          .search(list(data.queries), 10)]
    for got, ranked in ((res["rows"][0], bm), (res["rows"][1], de)):
        recall5 = sum(len(set(r[:5]) & rel) / len(rel) for r, rel in zip(ranked, data.relevant)) / 3
        assert got["Recall@5"] == pytest.approx(recall5)
    fused = []
    for a, b in zip(bm, de):
        s = {}
        for lst in (a, b):
            for rank, d in enumerate(lst, 1):
                s[d] = s.get(d, 0) + 1 / (100 + rank)
        fused.append(sorted(s, key=lambda d: -s[d]))
    hit1 = sum(bool({f[0]} & rel) for f, rel in zip(fused, data.relevant)) / 3
    assert res["rows"][2]["Hit@1"] == pytest.approx(hit1)


def test_pubmedqa_bm25_quality(pubmedqa_data, pubmedqa_corpus):
    res = evaluate(pubmedqa_set(pubmedqa_data), str(pubmedqa_corpus), ["BM25"], ks=(1, 5))
    row = res["rows"][0]
    assert row["Recall@5"] >= 0.70 and row["Hit@1"] >= 0.90, row


def test_cli_eval_on_qrels_files(toy_corpus, tmp_path, capsys):
    (tmp_path / "q.tsv").write_text("q1\tinsulin potassium\nq2\tatrial fibrillation stroke\n")
    (tmp_path / "qrels.trec").write_text("q1 0 toy_b_2 1\nq2 0 toy_b_0 1\n")
    out = tmp_path / "r.json"
    assert main(["eval", "--queries", str(tmp_path / "q.tsv"), "--qrels", str(tmp_path / "qrels.trec"),
                 "--corpus", str(toy_corpus), "--k", "1,3", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    ranked = [[h.id for h in row] for row in get_retriever(str(toy_corpus), "BM25")
              .search(["insulin potassium", "atrial fibrillation stroke"], 3)]
    expect = sum(r[0] == t for r, t in zip(ranked, ["toy_b_2", "toy_b_0"])) / 2
    assert res["rows"][0]["Hit@1"] == pytest.approx(expect)
    assert "Recall@3" in capsys.readouterr().out
    assert main(["eval"]) == 1  # no labelled set: a clear error, exit 1
    assert "--pubmedqa PATH" in capsys.readouterr().err
