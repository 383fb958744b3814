"""Real data: PubMedQA's 1,000 questions over its 3,358 context snippets (shared/datasets/pubmedqa)."""
from medret import get_retriever
from medret.eval import metrics
from medret.eval.pubmedqa import queries_and_qrels, snippets


def test_corpus_has_every_context(pubmedqa_data):
    docs = snippets(pubmedqa_data)
    assert len(docs) == sum(len(v["CONTEXTS"]) for v in pubmedqa_data.values()) == 3358
    assert len({d["id"] for d in docs}) == len(docs)


def test_bm25_reaches_the_expected_quality(pubmedqa_data, pubmedqa_corpus):
    queries, relevant = queries_and_qrels(pubmedqa_data)
    hits = get_retriever(str(pubmedqa_corpus), "BM25").search(queries, 5)
    ranked = [[h.id for h in row] for row in hits]
    recall5 = metrics.mean([metrics.recall_at(r, rel, 5) for r, rel in zip(ranked, relevant)])
    hit1 = metrics.mean([metrics.hit_at(r, rel, 1) for r, rel in zip(ranked, relevant)])
    assert recall5 >= 0.70, recall5
    assert hit1 >= 0.90, hit1
