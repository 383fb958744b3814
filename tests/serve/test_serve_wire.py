"""POST /retrieve speaks Search-R1's wire format; bad input gets a 4xx naming the field; the server survives it."""
from __future__ import annotations

import json
import random

import orjson
import pytest
import requests

from medret import get_retriever
from medret.config import RetrieverConfig
from medret.serve.app import ServeSettings

LIMITS = dict(max_batch=20, max_query_chars=200, max_topk=10)
BODY_LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def server(serve_corpus, serve_helpers):
    config = RetrieverConfig(corpus_name=str(serve_corpus), retriever_name="BM25", **LIMITS)
    r = serve_helpers.start_in_thread(config, ServeSettings(max_body_bytes=BODY_LIMIT))
    yield r
    r.stop()


@pytest.fixture
def local(serve_corpus):
    return get_retriever(str(serve_corpus), "BM25")


def corpus_texts(folder) -> dict:
    """id -> (title, content), read straight from the chunk files."""
    out = {}
    for f in sorted((folder / "chunk").glob("*.jsonl")):
        for line in f.read_text().splitlines():
            d = json.loads(line)
            out[d["id"]] = (d["title"], d["content"])
    return out


QUERIES = ["sepsis mortality elderly", "heart failure congestion", "insulin glucose potassium",
           "sepsis mortality elderly"]


def test_scores_mode_matches_in_process_json_byte_for_byte(server, local, serve_corpus):
    texts = corpus_texts(serve_corpus)
    resp = requests.post(server.url, json={"queries": QUERIES, "topk": 5, "return_scores": True}, timeout=30)
    assert resp.status_code == 200 and resp.headers["content-type"] == "application/json"
    expected = local.retrieve(QUERIES, 5, True)
    assert resp.content == orjson.dumps(expected)  # same documents, same float scores, same order
    data = resp.json()
    assert len(data["result"]) == 4
    for row in data["result"]:
        assert len(row) == 5
        scores = [item["score"] for item in row]
        assert scores == sorted(scores, reverse=True)
        for item in row:
            assert set(item) == {"document", "score"} and isinstance(item["score"], float)
            title, content = texts[item["document"]["id"]]
            assert item["document"] == {"id": item["document"]["id"], "title": title,
                                        "contents": f'"{title}"\n{content}'}
    assert data["result"][0] == data["result"][3]  # a repeated query gets the same answer


def test_documents_mode_has_no_scores_and_no_500(server, local):
    resp = requests.post(server.url, json={"queries": QUERIES, "topk": 4, "return_scores": False}, timeout=30)
    assert resp.status_code == 200
    data = resp.json()
    assert data == local.retrieve(QUERIES, 4, False)
    with_scores = local.retrieve(QUERIES, 4, True)["result"]
    assert data["result"] == [[item["document"] for item in row] for row in with_scores]
    assert all("score" not in doc and "contents" in doc for row in data["result"] for doc in row)


def test_return_scores_missing_means_false_like_search_r1(server, local):
    data = requests.post(server.url, json={"queries": QUERIES[:2], "topk": 2}, timeout=30).json()
    assert data == local.retrieve(QUERIES[:2], 2, False)


@pytest.mark.parametrize("payload", [{"queries": ["sepsis"]}, {"queries": ["sepsis"], "topk": None}])
def test_topk_missing_or_null_uses_server_default_3(server, local, payload):
    data = requests.post(server.url, json={**payload, "return_scores": True}, timeout=30).json()
    assert len(data["result"][0]) == 3
    assert data == local.retrieve(["sepsis"], 3, True)


def test_empty_query_list(server):
    resp = requests.post(server.url, json={"queries": [], "topk": 3, "return_scores": True}, timeout=30)
    assert resp.status_code == 200 and resp.json() == {"result": []}


def test_single_query_field_like_skyrl(server, local):
    one = requests.post(server.url, json={"query": "septic shock vasopressors", "topk": 3, "return_scores": True},
                        timeout=30).json()
    many = requests.post(server.url, json={"queries": ["septic shock vasopressors"], "topk": 3,
                                           "return_scores": True}, timeout=30).json()
    assert one == many == local.retrieve(["septic shock vasopressors"], 3, True)
    assert len(one["result"]) == 1


def test_unknown_fields_are_ignored_like_search_r1(server, local):
    data = requests.post(server.url, json={"queries": ["stroke"], "topk": 2, "return_scores": True,
                                           "request_id": "abc", "extra": [1, 2]}, timeout=30).json()
    assert data == local.retrieve(["stroke"], 2, True)


def test_integral_float_topk_is_accepted(server, local):
    data = requests.post(server.url, json={"queries": ["stroke"], "topk": 2.0, "return_scores": True},
                         timeout=30).json()
    assert data == local.retrieve(["stroke"], 2, True)


def test_search_r1_and_verl_style_clients_work_unchanged(server, local):
    """Written the way Search-R1's _batch_search / _passages2string and veRL's call_search_api are written."""
    queries = ["sepsis mortality elderly icu", "atrial fibrillation stroke anticoagulation"]
    # Search-R1 generation.py: plain requests.post(url, json=payload).json()['result']
    payload = {"queries": queries, "topk": 3, "return_scores": True}
    results = requests.post(server.url, json=payload).json()["result"]
    expected = local.search(queries, 3)
    for result, hits in zip(results, expected):
        for idx, doc_item in enumerate(result):
            content = doc_item["document"]["contents"]
            title = content.split("\n")[0]
            text = "\n".join(content.split("\n")[1:])
            assert title == '"' + hits[idx].title + '"'  # the title line Search-R1 shows the model
            assert text == hits[idx].content
    # veRL search_r1_like_utils.call_search_api: headers, timeout, raise_for_status, response.json()
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    response = requests.post(server.url, headers=headers, json=payload, timeout=30)
    response.raise_for_status()
    assert response.json() == local.retrieve(queries, 3, True)


# ---- bad input ---------------------------------------------------------------------------------------------
def body(obj) -> bytes:
    return json.dumps(obj).encode()


BAD = [
    ("malformed-json", b'{"queries": ["sepsis"', 400, "body"),
    ("empty-body", b"", 400, "body"),
    ("not-utf8", b'{"queries": ["\xff\xfe"]}', 400, "body"),
    ("json-array", body(["sepsis"]), 400, "body"),
    ("json-string", body("sepsis"), 400, "body"),
    ("deep-nesting", b"[" * 5000 + b"]" * 5000, 400, "body"),
    ("huge-int", b'{"queries": ["a"], "topk": 123456789012345678901234567890}', 400, None),
    ("no-queries", body({"topk": 3}), 400, "queries"),
    ("queries-string", body({"queries": "sepsis"}), 400, "queries"),
    ("queries-null", body({"queries": None}), 400, "queries"),
    ("queries-dict", body({"queries": {"a": 1}}), 400, "queries"),
    ("query-int", body({"queries": ["ok", 5]}), 400, "queries[1]"),
    ("query-empty", body({"queries": ["ok", "  "]}), 400, "queries[1]"),
    ("query-nested-list", body({"queries": [["sepsis"]]}), 400, "queries[0]"),
    ("too-many-queries", body({"queries": ["sepsis"] * 21}), 400, "queries"),
    ("oversize-query", body({"queries": ["sepsis " * 40]}), 400, "queries[0]"),
    ("single-query-int", body({"query": 7}), 400, "query"),
    ("single-query-oversize", body({"query": "x" * 201}), 400, "query"),
    ("query-and-queries", body({"query": "a", "queries": ["b"]}), 400, "query"),
    ("topk-zero", body({"queries": ["sepsis"], "topk": 0}), 400, "topk"),
    ("topk-negative", body({"queries": ["sepsis"], "topk": -2}), 400, "topk"),
    ("topk-over-max", body({"queries": ["sepsis"], "topk": 11}), 400, "topk"),
    ("topk-string", body({"queries": ["sepsis"], "topk": "3"}), 400, "topk"),
    ("topk-fraction", body({"queries": ["sepsis"], "topk": 2.5}), 400, "topk"),
    ("topk-bool", body({"queries": ["sepsis"], "topk": True}), 400, "topk"),
    ("return-scores-string", body({"queries": ["sepsis"], "return_scores": "yes"}), 400, "return_scores"),
    ("return-scores-int", body({"queries": ["sepsis"], "return_scores": 1}), 400, "return_scores"),
    ("body-too-large", body({"queries": ["a" * 100] * (BODY_LIMIT // 100)}), 413, "body"),
]


@pytest.mark.parametrize("name,data,status,field", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_a_4xx_naming_the_field_and_the_server_keeps_serving(server, local, name, data, status,
                                                                          field):
    resp = requests.post(server.url, data=data, headers={"Content-Type": "application/json"}, timeout=30)
    assert resp.status_code == status, resp.text
    err = resp.json()
    assert set(err) == {"error", "field"} and isinstance(err["error"], str) and len(err["error"]) > 10
    if field is not None:
        assert err["field"] == field
        assert field.split("[")[0] in err["error"] or field == "body"
    ok = requests.post(server.url, json={"queries": ["sepsis"], "topk": 2, "return_scores": True}, timeout=30)
    assert ok.status_code == 200 and ok.json() == local.retrieve(["sepsis"], 2, True)


def test_chunked_body_over_the_limit_is_413(server):
    def gen():
        yield b'{"queries": ['
        for _ in range(BODY_LIMIT // 1000 + 2):
            yield b'"' + b"a" * 1000 + b'",'
        yield b'"b"]}'

    resp = requests.post(server.url, data=gen(), headers={"Content-Type": "application/json"}, timeout=30)
    assert resp.status_code == 413 and resp.json()["field"] == "body"
    assert requests.get(server.base + "/health", timeout=30).status_code == 200


def test_unknown_paths_and_methods_answer_json(server):
    r = requests.get(server.base + "/nope", timeout=30)
    assert r.status_code == 404 and "/retrieve" in r.json()["error"]
    r = requests.get(server.url, timeout=30)
    assert r.status_code == 405 and "GET" in r.json()["error"]
    r = requests.post(server.base + "/health", timeout=30)
    assert r.status_code == 405


def test_random_garbage_never_breaks_the_server(server, local):
    rng = random.Random(5)
    pieces = [b"{", b"}", b"[", b"]", b'"queries"', b'"topk"', b":", b",", b"1", b"-1", b"null", b"true",
              b'"x"', b"\x00", b"\xc3", b"1e309", b"NaN"]
    for _ in range(60):
        data = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 30)))
        resp = requests.post(server.url, data=data, timeout=30)
        assert 200 <= resp.status_code < 500, (data, resp.status_code, resp.text)
        assert isinstance(resp.json(), dict)
    assert requests.post(server.url, json={"queries": ["sepsis"], "topk": 2, "return_scores": True},
                         timeout=30).json() == local.retrieve(["sepsis"], 2, True)
