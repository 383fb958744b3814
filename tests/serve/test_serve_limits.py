"""Bounded work and memory per request (issue 13): unknown JSON fields are counted, not remembered; an answer
larger than max_answer_docs / max_answer_bytes is refused with 413 before any search; an oversize request is
searched alone in slices, so a small request is answered while a huge one is still being searched."""
from __future__ import annotations

import logging
import random
import threading

import orjson
import pytest
import requests

from medret import get_retriever
from medret.config import RetrieverConfig
from medret.errors import AnswerTooLargeError
from medret.serve.app import IGNORED_NAMES_KEPT, ServeSettings
from medret.transports.local import LocalTransport


def test_unknown_field_names_are_counted_not_remembered(serve_corpus, serve_thread, caplog):
    srv = serve_thread(RetrieverConfig(corpus_name=str(serve_corpus)), ServeSettings())
    svc = srv.service
    caplog.set_level(logging.WARNING, "medret.serve.app")
    expected = get_retriever(str(serve_corpus), "BM25").retrieve(["sepsis"], 3, True)
    for r in range(20):  # 20 requests x 3,000 distinct unknown names: 60,000 names in all
        body = {"queries": ["sepsis"], "topk": 3, "return_scores": True}
        body.update({f"junk_{r}_{i}": i for i in range(3000)})
        resp = requests.post(srv.url, data=orjson.dumps(body), timeout=60)
        assert resp.status_code == 200 and resp.json() == expected
    assert len(svc._ignored_logged) == IGNORED_NAMES_KEPT  # bounded, whatever clients send
    stats = requests.get(srv.base + "/stats", timeout=30).json()
    assert stats["ignored_fields"] == 20 * 3000
    warnings = [r.getMessage() for r in caplog.records if "unknown request field" in r.getMessage()]
    assert 1 <= len(warnings) <= 2 and "no longer logging them" in warnings[-1]


def _answer_bytes(corpus, queries, k) -> int:
    return len(orjson.dumps(get_retriever(str(corpus), "BM25").retrieve(queries, k, True)))


def test_answers_over_the_limits_are_413_naming_the_limit_and_the_fix(serve_corpus, serve_thread, serve_helpers):
    queries = serve_helpers.random_queries(random.Random(3), 12, dup_rate=0)
    real = _answer_bytes(serve_corpus, queries, 5)  # the answer's true size, from the in-process retriever
    srv = serve_thread(RetrieverConfig(corpus_name=str(serve_corpus), max_answer_docs=50,
                                       max_answer_bytes=real * 4))
    before = requests.get(srv.base + "/stats", timeout=30).json()["batches_run"]
    r = requests.post(srv.url, json={"queries": queries[:11], "topk": 5}, timeout=30)  # 55 > 50 documents
    assert r.status_code == 413 and r.json()["field"] == "queries"
    err = r.json()["error"]
    assert "11 x 5 = 55 documents" in err and "max_answer_docs=50" in err and "at most 10 queries" in err
    assert "--max-answer-docs" in err
    assert requests.post(srv.url, json={"queries": queries[:10], "topk": 5}, timeout=30).status_code == 200
    assert requests.get(srv.base + "/stats", timeout=30).json()["batches_run"] == before + 1  # 413: no search

    # the byte estimate: within 4x of the true size of the answer, both ways
    tight = serve_thread(RetrieverConfig(corpus_name=str(serve_corpus), max_answer_bytes=real // 4))
    r = requests.post(tight.url, json={"queries": queries, "topk": 5, "return_scores": True}, timeout=30)
    assert r.status_code == 413 and f"max_answer_bytes={real // 4}" in r.json()["error"]
    assert "--max-answer-bytes" in r.json()["error"]
    roomy = serve_thread(RetrieverConfig(corpus_name=str(serve_corpus), max_answer_bytes=real * 4))
    r = requests.post(roomy.url, json={"queries": queries, "topk": 5, "return_scores": True}, timeout=30)
    assert r.status_code == 200 and len(r.content) == real


def test_the_issues_huge_request_is_refused_before_searching(serve_corpus, serve_thread):
    """16,384 queries x topk 1000 (allowed by max_batch / max_topk) is refused by the default answer limits
    (the topk is capped at the corpus size: 16,384 x 60 documents > 524,288)."""
    srv = serve_thread(RetrieverConfig(corpus_name=str(serve_corpus)))
    queries = [f"sepsis {i}" for i in range(16384)]
    r = requests.post(srv.url, json={"queries": queries, "topk": 1000}, timeout=120)
    assert r.status_code == 413 and "16384 x 60 = 983040 documents" in r.json()["error"]
    assert requests.get(srv.base + "/stats", timeout=30).json()["batches_run"] == 0


def test_in_process_calls_have_the_same_limits(serve_corpus):
    r = get_retriever(str(serve_corpus), "BM25", max_answer_docs=20)
    with pytest.raises(AnswerTooLargeError, match=r"5 x 5 = 25 documents, more than max_answer_docs=20"):
        r.retrieve([f"q{i}" for i in range(5)], 5)
    with pytest.raises(AnswerTooLargeError, match="max_answer_docs=20"):
        r.search([f"q{i}" for i in range(5)], 5)
    assert len(r.search([f"sepsis {i}" for i in range(4)], 5)) == 4
    tiny = get_retriever(str(serve_corpus), "BM25", max_answer_bytes=1000)  # a few documents' worth
    with pytest.raises(AnswerTooLargeError, match="max_answer_bytes=1000"):
        tiny.retrieve(["sepsis", "fever"], 10)


class Gated:
    """The real engine (LocalTransport), with gates in the searches of the request whose queries start with
    'huge': its first slice waits for `gate1`, its second for `gate2`; every call is logged in order."""

    def __init__(self, config):
        self.inner = LocalTransport(config)
        self.log: list[tuple[str, int]] = []
        self.huge_slices = 0
        self.huge_started = threading.Event()
        self.gate1 = threading.Event()
        self.gate2 = threading.Event()

    def search(self, queries, k):
        tag = "huge" if queries[0].startswith("huge") else "small"
        if tag == "huge":
            self.huge_slices += 1
            if self.huge_slices == 1:
                self.huge_started.set()
                assert self.gate1.wait(60)
            elif self.huge_slices == 2:
                assert self.gate2.wait(60)
        self.log.append((tag, len(queries)))
        return self.inner.search(queries, k)

    def info(self):
        return self.inner.info()

    def close(self):
        self.inner.close()


def test_a_small_request_is_answered_while_a_huge_one_is_being_searched(serve_corpus, serve_thread, serve_helpers):
    """Real uvicorn on loopback. The huge request (40 queries x topk 10 = 400 hits, max_batch_docs 40) is
    searched in slices of 4 queries; a small request sent during its first slice is answered before the huge
    one's second slice may even start (gate2 opens only once the small answer has arrived)."""
    config = RetrieverConfig(corpus_name=str(serve_corpus))
    gated: list[Gated] = []

    def loader():
        gated.append(Gated(config))
        return gated[0]

    srv = serve_thread(config, ServeSettings(max_batch_docs=40), loader=loader)
    g = gated[0]
    words = serve_helpers.WORDS
    huge_q = [f"huge {words[i]} {words[(3 * i + 1) % len(words)]}" for i in range(40)]
    answers: dict[str, requests.Response] = {}
    done = {"huge": threading.Event(), "small": threading.Event()}

    def post(name, queries, k):
        answers[name] = requests.post(srv.url, json={"queries": queries, "topk": k, "return_scores": True},
                                      timeout=120)
        done[name].set()

    threads = [threading.Thread(target=post, args=("huge", huge_q, 10))]
    threads[0].start()
    assert g.huge_started.wait(60)  # the huge request's first slice is in the engine
    threads.append(threading.Thread(target=post, args=("small", ["sepsis fever"], 3)))
    threads[1].start()
    # the small request is queued behind it (as GET /stats reports while the engine holds the huge one)
    while requests.get(srv.base + "/stats", timeout=30).json()["queued_requests"] < 1:
        assert threads[1].is_alive() or done["small"].is_set()
        threading.Event().wait(0.005)
    g.gate1.set()
    small_answered = done["small"].wait(60)
    huge_pending = not done["huge"].is_set()
    g.gate2.set()
    for t in threads:
        t.join(120)
    assert small_answered and huge_pending, "the small request waited for the whole huge one"
    assert g.log[:3] == [("huge", 4), ("small", 1), ("huge", 4)]
    local = get_retriever(str(serve_corpus), "BM25")
    assert answers["small"].json() == local.retrieve(["sepsis fever"], 3, True)
    assert answers["huge"].json() == local.retrieve(huge_q, 10, True)  # slicing changes no BM25 result
    stats = requests.get(srv.base + "/stats", timeout=30).json()
    assert stats["oversize_requests"] == 1 and stats["queued_requests"] == 0  # all answered: nothing waits
