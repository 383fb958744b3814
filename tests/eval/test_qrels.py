"""TREC / BEIR qrels and queries parsing, labelled sets, BEIR corpus conversion."""
import pytest

from medret import get_retriever
from medret.errors import CorpusError
from medret.eval.qrels import (
    labelled_set,
    load_labelled,
    load_qrels,
    load_queries,
    pubmedqa_set,
    write_beir_corpus,
)


def test_trec_qrels(tmp_path):
    p = tmp_path / "q.trec"
    p.write_text("# comment\n1 0 docA 1\n1 0 docB 0\n1 Q0 docC 2\n\n2 0 docA 1\n")
    assert load_qrels(p) == {"1": {"docA": 1, "docB": 0, "docC": 2}, "2": {"docA": 1}}


def test_beir_qrels_with_header(tmp_path):
    p = tmp_path / "test.tsv"
    p.write_text("query-id\tcorpus-id\tscore\nq1\td 1\t1\nq1\td2\t0\nq2\td3\t2\n")
    assert load_qrels(p) == {"q1": {"d 1": 1, "d2": 0}, "q2": {"d3": 2}}


def test_bad_qrels_name_file_and_line(tmp_path):
    p = tmp_path / "bad.tsv"
    p.write_text("q1\td1\t1\nq1 d2\n")
    with pytest.raises(CorpusError, match=r"bad.tsv:2: 2 columns"):
        load_qrels(p)
    p.write_text("q1\td1\t1\nq1\td2\tyes\n")
    with pytest.raises(CorpusError, match=r"bad.tsv:2: relevance='yes'"):
        load_qrels(p)
    with pytest.raises(CorpusError, match="not found"):
        load_qrels(tmp_path / "missing.tsv")


def test_queries_jsonl_and_tsv(tmp_path):
    j = tmp_path / "queries.jsonl"
    j.write_text('{"_id": "q1", "text": "sepsis in the elderly"}\n{"_id": 2, "text": "kidney injury"}\n')
    assert load_queries(j) == {"q1": "sepsis in the elderly", "2": "kidney injury"}
    t = tmp_path / "topics.tsv"
    t.write_text("q1\tsepsis in the elderly\nq2\tstroke risk\n")
    assert list(load_queries(t).items()) == [("q1", "sepsis in the elderly"), ("q2", "stroke risk")]
    t.write_text("q1 no tab here\n")
    with pytest.raises(CorpusError, match="topics.tsv:1"):
        load_queries(t)
    j.write_text('{"id": "q1"}\n')
    with pytest.raises(CorpusError, match="queries.jsonl:1"):
        load_queries(j)


def test_labelled_set_keeps_queries_with_relevant_documents():
    ls = labelled_set({"a": "x", "b": "y", "c": "z"}, {"a": {"d1": 1, "d2": 0}, "b": {"d3": 0}})
    assert ls.qids == ("a",) and ls.queries == ("x",) and ls.relevant == (frozenset({"d1"}),)
    with pytest.raises(CorpusError, match="no query"):
        labelled_set({"b": "y"}, {"b": {"d3": 0}})


def test_pubmedqa_set(pubmedqa_data):
    ls = pubmedqa_set(pubmedqa_data)
    assert len(ls) == 1000
    pmid = next(iter(pubmedqa_data))
    assert ls.qids[0] == pmid and ls.queries[0] == pubmedqa_data[pmid]["QUESTION"]
    assert ls.relevant[0] == {f"{pmid}_{i}" for i in range(len(pubmedqa_data[pmid]["CONTEXTS"]))}


def test_beir_corpus_becomes_a_searchable_corpus(tmp_path):
    src = tmp_path / "beir" / "corpus.jsonl"
    src.parent.mkdir()
    src.write_text('{"_id": "d1", "title": "Sepsis", "text": "Sepsis in elderly patients."}\n'
                   '{"_id": "d2", "title": "", "text": "Insulin treats ketoacidosis."}\n')
    folder = write_beir_corpus(src, tmp_path / "medrag")
    hits = get_retriever(str(folder), "BM25").search(["insulin ketoacidosis"], 2)[0]
    assert hits[0].id == "d2" and hits[0].content == "Insulin treats ketoacidosis."
    q = tmp_path / "beir" / "queries.jsonl"
    q.write_text('{"_id": "q1", "text": "insulin"}\n')
    r = tmp_path / "beir" / "test.tsv"
    r.write_text("query-id\tcorpus-id\tscore\nq1\td2\t1\n")
    assert load_labelled(q, r).relevant == (frozenset({"d2"}),)
    src.write_text('{"id": "d1"}\n')
    with pytest.raises(CorpusError, match="corpus.jsonl:1"):
        write_beir_corpus(src, tmp_path / "other")
    assert not (tmp_path / "other" / "chunk" / "corpus.jsonl").exists()
