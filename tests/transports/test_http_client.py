"""The http transport: retries with backoff on connection errors and 5xx, a clear TransportError, address files."""
from __future__ import annotations

import logging
import socket
import threading
import time

import pytest

from medret import get_retriever
from medret.api import Retriever
from medret.config import RetrieverConfig
from medret.errors import TransportError
from medret.serve.app import ServeSettings
from medret.transports.http import HttpTransport, base_url
from medret.transports.local import LocalTransport


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client(**kw) -> Retriever:
    return Retriever(RetrieverConfig(corpus_name="remote", backend="http", **kw))


def retry_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "medret.transports.http" and "retrying" in
            r.getMessage()]


@pytest.fixture
def fast_backoff(monkeypatch):
    monkeypatch.setattr(HttpTransport, "backoff_base", 0.02)


@pytest.mark.parametrize("url,base", [
    ("http://127.0.0.1:8000/retrieve", "http://127.0.0.1:8000"),
    ("http://127.0.0.1:8000/retrieve/", "http://127.0.0.1:8000"),
    ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
    ("http://127.0.0.1:8000/", "http://127.0.0.1:8000"),
    ("127.0.0.1:8000", "http://127.0.0.1:8000"),
    ("node12:41234\n", "http://node12:41234"),
    ("https://search.example/api/retrieve", "https://search.example/api"),
])
def test_base_url(url, base):
    assert base_url(url) == base


def test_closed_port_raises_transport_error_naming_url_attempts_and_cause(fast_backoff, caplog):
    port = free_port()
    r = client(url=f"http://127.0.0.1:{port}/retrieve", retries=2, timeout=5)
    caplog.set_level(logging.WARNING, "medret.transports.http")
    t0 = time.monotonic()
    with pytest.raises(TransportError) as e:
        r.search(["sepsis"], 3)
    msg = str(e.value)
    assert f"http://127.0.0.1:{port}/retrieve" in msg and "after 3 attempt(s)" in msg
    assert "ConnectionError" in msg and "refused" in msg.lower()
    assert len(retry_warnings(caplog)) == 2
    assert time.monotonic() - t0 >= 0.02 + 0.04  # backed off 0.02 s then 0.04 s


def test_no_retries_means_one_attempt(fast_backoff, caplog):
    r = client(url=f"http://127.0.0.1:{free_port()}", retries=0, timeout=5)
    caplog.set_level(logging.WARNING, "medret.transports.http")
    with pytest.raises(TransportError, match=r"after 1 attempt\(s\)"):
        r.retrieve(["sepsis"])
    assert retry_warnings(caplog) == []


def test_server_not_up_yet_retries_then_succeeds(serve_corpus, serve_thread, caplog):
    port = free_port()
    config = RetrieverConfig(corpus_name=str(serve_corpus), retriever_name="BM25")
    started: list = []
    starter = threading.Timer(0.5, lambda: started.append(serve_thread(config, port=port)))
    r = client(url=f"http://127.0.0.1:{port}/retrieve", retries=8, timeout=10)
    caplog.set_level(logging.WARNING, "medret.transports.http")
    starter.start()
    try:
        got = r.retrieve(["sepsis mortality"], 4)
    finally:
        starter.join()
    assert got == get_retriever(str(serve_corpus), "BM25").retrieve(["sepsis mortality"], 4)
    warnings = retry_warnings(caplog)
    assert len(warnings) >= 2 and "ConnectionError" in warnings[0]


def test_503_while_loading_is_retried(serve_corpus, serve_thread, caplog):
    config = RetrieverConfig(corpus_name=str(serve_corpus), retriever_name="BM25")
    gate = threading.Event()
    srv = serve_thread(config, loader=lambda: (gate.wait(30), LocalTransport(config))[1], wait_ready=False)
    threading.Timer(0.4, gate.set).start()
    caplog.set_level(logging.WARNING, "medret.transports.http")
    got = client(url=srv.base, retries=8).retrieve(["heart failure"], 2)
    assert got == get_retriever(str(serve_corpus), "BM25").retrieve(["heart failure"], 2)
    assert any("HTTP 503" in w for w in retry_warnings(caplog))
    assert srv.service.requests_rejected >= 1


def test_5xx_until_the_last_try_raises_with_the_server_message(tmp_path, serve_thread, fast_backoff):
    srv = serve_thread(RetrieverConfig(corpus_name=str(tmp_path / "nope")), wait_ready=False)
    assert srv.service.batcher.ready.wait(30)
    with pytest.raises(TransportError) as e:
        client(url=srv.url, retries=3).search(["sepsis"], 3)
    msg = str(e.value)
    assert "after 4 attempt(s)" in msg and "HTTP 503" in msg and srv.url in msg and "nope" in msg
    assert srv.service.requests_rejected == 4


def test_address_file_that_never_appears(tmp_path):
    r = client(address_file=str(tmp_path / "srv.addr"), timeout=0.3)
    t0 = time.monotonic()
    with pytest.raises(TransportError, match=r"srv.addr.*did not appear within 0.3s.*--address-file"):
        r.search(["sepsis"], 3)
    assert time.monotonic() - t0 >= 0.3


def test_address_file_is_read_again_when_the_server_moves(serve_corpus, serve_thread, tmp_path, fast_backoff):
    config = RetrieverConfig(corpus_name=str(serve_corpus), retriever_name="BM25")
    addr = tmp_path / "srv.addr"
    a = serve_thread(config)
    addr.write_text(a.base.removeprefix("http://") + "\n")
    r = client(address_file=str(addr), retries=4, timeout=10)
    expected = get_retriever(str(serve_corpus), "BM25").retrieve(["stroke"], 3)
    assert r.retrieve(["stroke"], 3) == expected
    a.stop()
    b = serve_thread(config)
    assert b.base != a.base
    addr.write_text(b.base.removeprefix("http://") + "\n")
    assert r.retrieve(["stroke"], 3) == expected
    assert r.transport.url == b.url


def test_medret_server_settings_limit_what_the_client_may_send(serve_corpus, serve_thread):
    srv = serve_thread(RetrieverConfig(corpus_name=str(serve_corpus), max_batch=2), ServeSettings())
    from medret.errors import QueryError

    with pytest.raises(QueryError, match=r"queries has 3 items.*max_batch=2"):
        client(url=srv.url).search(["a", "b", "c"], 3)
