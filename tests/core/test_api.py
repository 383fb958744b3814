import json

import pytest

from medret import Hit, get_retriever
from medret.config import RetrieverConfig
from medret.errors import ConfigError, IndexBuildError, QueryError
from tests.conftest import TOY_DOCS


def test_retrieve_returns_searchr1_json(toy_corpus):
    r = get_retriever(str(toy_corpus), "BM25")
    out = r.retrieve(["sepsis in elderly ICU patients", "creatinine"], topk=2, return_scores=True)
    assert list(out) == ["result"] and len(out["result"]) == 2
    first = out["result"][0][0]
    assert set(first) == {"document", "score"} and isinstance(first["score"], float)
    assert first["document"] == {"id": "toy_a_0", "title": "Sepsis", "contents": '"Sepsis"\n' + TOY_DOCS[0][1]}
    assert out["result"][1][0]["document"]["id"] == "toy_a_4"
    json.dumps(out)  # plain JSON types only


def test_return_scores_false_gives_documents(toy_corpus):
    r = get_retriever(str(toy_corpus), "BM25")
    with_scores = r.retrieve(["heart failure congestion"], topk=3)
    without = r.retrieve(["heart failure congestion"], topk=3, return_scores=False)
    assert without == {"result": [[item["document"] for item in with_scores["result"][0]]]}


def test_searchr1_passages2string_sees_the_title(toy_corpus):
    # Search-R1 formats a hit as: title = first line of contents, text = the rest
    doc = get_retriever(str(toy_corpus), "BM25").retrieve(["pneumonia"], 1)["result"][0][0]["document"]
    title, text = doc["contents"].split("\n")[0], "\n".join(doc["contents"].split("\n")[1:])
    assert title == '"Pneumonia"' and text == TOY_DOCS[3][1]


def test_duplicates_are_searched_once_and_answered_in_order(toy_corpus):
    r = get_retriever(str(toy_corpus), "BM25")
    seen = []
    real = r.transport.search

    def spy(queries, k):
        seen.append(list(queries))
        return real(queries, k)

    r.transport.search = spy
    hits = r.search(["sepsis", "kidney", "sepsis", "sepsis"], k=2)
    assert seen == [["sepsis", "kidney"]]
    assert hits[0] == hits[2] == hits[3] and hits[0] != hits[1]
    assert all(isinstance(h, Hit) for row in hits for h in row)


def test_batch_equals_one_by_one(toy_corpus):
    r = get_retriever(str(toy_corpus), "BM25")
    qs = ["sepsis mortality", "stroke", "insulin potassium", "lung infection", "icu delirium"]
    assert r.search(qs, 3) == [r.search([q], 3)[0] for q in qs]


def test_get_retriever_is_cached_per_configuration(toy_corpus):
    a = get_retriever(str(toy_corpus), "BM25")
    assert get_retriever(str(toy_corpus), "bm25") is not a  # a different configuration string
    assert get_retriever(str(toy_corpus), "BM25") is a
    assert get_retriever(str(toy_corpus), "BM25", rrf_k=60) is not a


def test_empty_batch_gives_empty_result(toy_corpus):
    assert get_retriever(str(toy_corpus), "BM25").retrieve([], 3) == {"result": []}


@pytest.mark.parametrize("queries, topk, message", [
    ("sepsis", 3, r"queries='sepsis' is invalid: pass a list of strings"),
    (["ok", 5], 3, r"queries\[1\]=5 is a int: every query must be a string"),
    (["ok", "  "], 3, r"queries\[1\]='  ' is empty"),
    (["ok"], 0, r"topk=0 is out of range: use 1 to 1000"),
    (["ok"], -2, r"topk=-2 is out of range"),
    (["ok"], 1001, r"topk=1001 is out of range: use 1 to 1000 \(max_topk\)"),
    (["ok"], "3", r"topk='3' is invalid: a whole number"),
    (["ok"], True, r"topk=True is invalid"),
])
def test_bad_input_is_named(toy_corpus, queries, topk, message):
    r = get_retriever(str(toy_corpus), "BM25")
    with pytest.raises(QueryError, match=message):
        r.retrieve(queries, topk)


def test_max_topk_and_max_batch_are_configurable(toy_corpus):
    r = get_retriever(str(toy_corpus), "BM25", max_topk=5, max_batch=2)
    with pytest.raises(QueryError, match=r"topk=6 is out of range: use 1 to 5"):
        r.retrieve(["a b"], 6)
    with pytest.raises(QueryError, match=r"queries has 3 items, more than max_batch=2"):
        r.retrieve(["aa", "bb", "cc"], 1)


def test_unknown_retriever_lists_valid_names(toy_corpus):
    with pytest.raises(ConfigError, match=r"retriever_name='ColBERT' is unknown: valid names are BM25, MedCPT"):
        get_retriever(str(toy_corpus), "ColBERT")


def test_unknown_option_lists_valid_options():
    with pytest.raises(ConfigError, match=r"unknown retriever option\(s\) \['colour'\]"):
        RetrieverConfig.from_mapping({"colour": "red"})


def test_searchr1_block_with_local_alias():
    cfg = RetrieverConfig.from_mapping({"local": True, "corpus_name": "MedCorp", "retriever_name": "MedCPT",
                                        "gpu_id": "3", "topk": 5, "url": "http://127.0.0.1:8000/retrieve"})
    assert (cfg.backend, cfg.gpu_id, cfg.corpus_name) == ("local", 3, "MedCorp")
    assert RetrieverConfig.from_mapping({"url": "http://x/retrieve"}).backend == "http"
    with pytest.raises(ConfigError, match=r"backend='grpc' is invalid: choose one of local, http, ray"):
        RetrieverConfig(backend="grpc")


def test_corpus_changed_since_index_build_is_refused(toy_corpus):
    from medret.corpus.registry import resolve_corpus
    from medret.corpus.store import open_corpus_store
    from medret.index.searchers import BM25Searcher

    corpus = resolve_corpus(str(toy_corpus), None)
    get_retriever(str(toy_corpus), "BM25")  # builds store + BM25
    # the store is rebuilt from changed files, the BM25 index is not
    (toy_corpus / "chunk" / "toy_b.jsonl").write_text('{"id": "n", "title": "T", "content": "new text"}\n')
    import shutil
    shutil.rmtree(corpus.sources[0].store_dir)
    store = open_corpus_store(corpus)
    with pytest.raises(IndexBuildError, match=r"built from other chunk files.*--rebuild"):
        BM25Searcher(corpus, store, auto_build=True, progress=False)


def test_hit_fields_and_title_newlines(tmp_path):
    from tests.conftest import write_chunks

    write_chunks(tmp_path / "nl", {"nl": [("Two\nline title", "Body text here.")]})
    hit = get_retriever(str(tmp_path / "nl"), "BM25").search(["body"], 1)[0][0]
    assert hit.contents == '"Two line title"\nBody text here.'
    assert (hit.id, hit.title, hit.content) == ("nl_0", "Two\nline title", "Body text here.")
