"""/health readiness, GET /, /stats counters, auth, engine failures."""
from __future__ import annotations

import threading
import time

import pytest
import requests

from medret import get_retriever
from medret.api import Hit, Retriever
from medret.config import RetrieverConfig
from medret.errors import QueryError, TransportError
from medret.serve.app import ServeSettings, create_app
from medret.transports.local import LocalTransport


def wait_for(cond, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_health_is_503_until_the_engine_is_loaded(serve_corpus, serve_thread):
    config = RetrieverConfig(corpus_name=str(serve_corpus), retriever_name="BM25")
    gate = threading.Event()
    loader_threads: list[str] = []

    def slow_loader():
        loader_threads.append(threading.current_thread().name)
        assert gate.wait(30)
        return LocalTransport(config)

    srv = serve_thread(config, loader=slow_loader, wait_ready=False)
    r = requests.get(srv.base + "/health", timeout=30)
    assert r.status_code == 503 and r.json()["status"] == "loading" and r.headers["retry-after"] == "1"
    r = requests.post(srv.url, json={"queries": ["sepsis"]}, timeout=30)
    assert r.status_code == 503 and "loading" in r.json()["error"]
    info = requests.get(srv.base + "/", timeout=30).json()
    assert info["status"] == "loading" and info["n_docs"] is None and info["corpus"] == str(serve_corpus)
    gate.set()
    wait_for(lambda: requests.get(srv.base + "/health", timeout=30).status_code == 200)
    assert requests.get(srv.base + "/health", timeout=30).json() == {"status": "ok"}
    got = requests.post(srv.url, json={"queries": ["sepsis"], "return_scores": True}, timeout=30).json()
    assert got == get_retriever(str(serve_corpus), "BM25").retrieve(["sepsis"], 3, True)
    assert loader_threads == ["medret-engine"]  # loaded on the engine's owner thread, not the event loop


def test_engine_load_failure_is_reported_and_the_server_answers(serve_thread, tmp_path):
    config = RetrieverConfig(corpus_name=str(tmp_path / "missing-corpus"), retriever_name="BM25")
    srv = serve_thread(config, wait_ready=False)
    assert srv.service.batcher.ready.wait(30)
    r = requests.get(srv.base + "/health", timeout=30)
    assert r.status_code == 503 and r.json()["status"] == "failed"
    assert "missing-corpus" in r.json()["error"]
    r = requests.post(srv.url, json={"queries": ["sepsis"]}, timeout=30)
    assert r.status_code == 503 and "missing-corpus" in r.json()["error"]


def test_a_failing_search_is_a_500_and_the_next_request_works(serve_corpus, serve_thread):
    config = RetrieverConfig(corpus_name=str(serve_corpus), retriever_name="BM25")

    class Flaky(LocalTransport):
        def search(self, queries, k):
            if "explode" in queries:
                raise RuntimeError("boom")
            return super().search(queries, k)

    srv = serve_thread(config, loader=lambda: Flaky(config))
    r = requests.post(srv.url, json={"queries": ["explode"]}, timeout=30)
    assert r.status_code == 500 and "boom" in r.json()["error"]
    ok = requests.post(srv.url, json={"queries": ["sepsis"], "return_scores": True}, timeout=30)
    assert ok.json() == get_retriever(str(serve_corpus), "BM25").retrieve(["sepsis"], 3, True)
    stats = requests.get(srv.base + "/stats", timeout=30).json()
    assert stats["engine_errors"] == 1 and stats["requests_failed"] == 1 and stats["requests_served"] == 1


def test_root_and_stats_describe_the_service(serve_corpus, serve_thread):
    config = RetrieverConfig(corpus_name=str(serve_corpus), retriever_name="BM25", max_topk=50, max_batch=99)
    srv = serve_thread(config, ServeSettings(default_topk=4, max_batch_queries=77, max_wait_ms=1.5))
    info = requests.get(srv.base + "/", timeout=30).json()
    n_docs = sum(1 for f in (serve_corpus / "chunk").glob("*.jsonl") for _ in open(f))
    from medret import __version__

    assert info["service"] == "medret" and info["version"] == __version__ and info["status"] == "ready"
    assert (info["corpus"], info["retriever"], info["n_docs"], info["index"]) == ("servecorp", "BM25", n_docs,
                                                                                 ["bm25"])
    assert (info["default_topk"], info["max_topk"], info["max_batch"]) == (4, 50, 99)
    assert (info["max_batch_queries"], info["max_wait_ms"], info["auth"]) == (77, 1.5, False)
    sizes = [1, 3, 0, 5, 2]
    for n in sizes:
        qs = [f"sepsis {w}" for w in ("a", "b", "c", "d", "e")[:n]]
        assert requests.post(srv.url, json={"queries": qs}, timeout=30).status_code == 200
    requests.post(srv.url, json={"queries": "bad"}, timeout=30)
    s = requests.get(srv.base + "/stats", timeout=30).json()
    assert s["requests_served"] == len(sizes) and s["requests_rejected"] == 1
    assert s["queries_received"] == sum(sizes)
    assert 1 <= s["batches_run"] <= len([n for n in sizes if n])  # the empty request never reaches the engine
    assert (s["n_docs"], s["index"], s["device"]) == (n_docs, ["bm25"], "cpu")
    lat = s["latency_ms"]
    assert lat["window"] == len(sizes) and 0 < lat["p50"] <= lat["p95"] <= lat["p99"]


@pytest.mark.parametrize("source", ["settings", "env"])
def test_bearer_token_guards_everything_but_health(serve_corpus, serve_thread, monkeypatch, source):
    config = RetrieverConfig(corpus_name=str(serve_corpus), retriever_name="BM25")
    if source == "env":
        monkeypatch.setenv("MEDRET_TOKEN", "s3cret")
        settings = None  # create_app reads MEDRET_TOKEN
    else:
        settings = ServeSettings(token="s3cret")
    srv = serve_thread(config, settings)
    good = {"Authorization": "Bearer s3cret"}
    payload = {"queries": ["sepsis"], "return_scores": True}
    assert requests.get(srv.base + "/health", timeout=30).status_code == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"},
                    {"Authorization": "Basic s3cret"}):
        r = requests.post(srv.url, json=payload, headers=headers, timeout=30)
        assert r.status_code == 401 and r.json()["field"] == "authorization", headers
        assert r.headers["www-authenticate"] == "Bearer"
        assert requests.get(srv.base + "/", headers=headers, timeout=30).status_code == 401
        assert requests.get(srv.base + "/stats", headers=headers, timeout=30).status_code == 401
    r = requests.post(srv.url, json=payload, headers=good, timeout=30)
    assert r.status_code == 200 and r.json() == get_retriever(str(serve_corpus), "BM25").retrieve(["sepsis"], 3)
    assert requests.get(srv.base + "/", headers=good, timeout=30).json()["auth"] is True
    # the medret client: with the token it works, without it fails clearly (and is not retried)
    monkeypatch.delenv("MEDRET_TOKEN", raising=False)
    with_token = Retriever(RetrieverConfig(corpus_name="x", backend="http", url=srv.url, token="s3cret"))
    assert with_token.retrieve(["sepsis"], 3) == get_retriever(str(serve_corpus), "BM25").retrieve(["sepsis"], 3)
    no_token = Retriever(RetrieverConfig(corpus_name="x", backend="http", url=srv.url, retries=3))
    with pytest.raises(TransportError, match="401"):
        no_token.search(["sepsis"], 3)
    assert requests.get(srv.base + "/stats", headers=good, timeout=30).json()["requests_rejected"] == 4 + 1


def test_auth_off_needs_no_header(serve_corpus, serve_thread, monkeypatch):
    monkeypatch.delenv("MEDRET_TOKEN", raising=False)
    srv = serve_thread(RetrieverConfig(corpus_name=str(serve_corpus)))
    assert requests.get(srv.base + "/", timeout=30).json()["auth"] is False
    assert requests.post(srv.url, json={"queries": ["sepsis"]}, timeout=30).status_code == 200


def test_http_client_returns_hits_equal_to_local_and_maps_4xx_to_query_error(serve_corpus, serve_thread):
    config = RetrieverConfig(corpus_name=str(serve_corpus), retriever_name="BM25", max_topk=4)
    srv = serve_thread(config)
    local = get_retriever(str(serve_corpus), "BM25")
    for url in (srv.url, srv.base, srv.base + "/", srv.base.removeprefix("http://")):
        remote = Retriever(RetrieverConfig(corpus_name="x", backend="http", url=url))
        hits = remote.search(["heart failure", "sepsis"], 4)
        assert hits == local.search(["heart failure", "sepsis"], 4)
        assert all(isinstance(h, Hit) and isinstance(h.score, float) for row in hits for h in row)
        info = remote.info()
        assert info["corpus"] == "servecorp" and info["max_topk"] == 4
    before = requests.get(srv.base + "/stats", timeout=30).json()["requests_rejected"]
    remote = Retriever(RetrieverConfig(corpus_name="x", backend="http", url=srv.url, retries=4))
    with pytest.raises(QueryError, match=r"topk=5 is out of range.*field: topk"):
        remote.search(["sepsis"], 5)  # allowed by the client's own max_topk, refused by the server's
    after = requests.get(srv.base + "/stats", timeout=30).json()["requests_rejected"]
    assert after == before + 1  # a 4xx is not retried


def test_create_app_is_lazy_until_started(serve_corpus):
    calls = []
    app = create_app(RetrieverConfig(corpus_name=str(serve_corpus)), ServeSettings(),
                     loader=lambda: calls.append(1))
    time.sleep(0.05)
    assert calls == [] and app.state.service.batcher.status == "loading"
