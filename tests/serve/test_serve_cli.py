"""`medret serve` as a real process: flags configure it, address file, token, SIGTERM, load failure."""
from __future__ import annotations

import socket
import threading

import pytest
import requests

from medret import get_retriever
from medret.api import Retriever
from medret.cli import main
from medret.config import RetrieverConfig

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_flags_configure_the_server(tmp_path, serve_process, serve_helpers):
    db = tmp_path / "db"
    serve_helpers.write_corpus(db / "textbooks", n_docs=30, seed=3)
    port = free_port()
    (tmp_path / "token").write_text("tok\n")
    p = serve_process("--corpus", "Textbooks", "--db-dir", str(db), "--retriever", "BM25", "--port", str(port),
                      "--topk", "2", "--max-topk", "4", "--max-batch", "3", "--max-query-chars", "50",
                      "--max-batch-queries", "64", "--max-wait-ms", "2", "--token-file", str(tmp_path / "token"),
                      "--max-answer-docs", "7", "--max-answer-bytes", "123456", "--max-batch-docs", "99",
                      "--header-timeout", "4", "--body-timeout", "6", "--keep-alive", "3")
    base = p.wait_address()
    assert base == f"http://127.0.0.1:{port}"
    auth = {"Authorization": "Bearer tok"}
    assert requests.get(base + "/health", timeout=30).status_code == 200
    assert requests.get(base + "/", timeout=30).status_code == 401
    info = requests.get(base + "/", headers=auth, timeout=30).json()
    assert info["corpus"].lower() == "textbooks" and info["retriever"] == "BM25" and info["db_dir"] == str(db)
    assert info["n_docs"] == 30 and info["index"] == ["bm25"]
    assert (info["default_topk"], info["max_topk"], info["max_batch"], info["max_query_chars"]) == (2, 4, 3, 50)
    assert (info["max_batch_queries"], info["max_wait_ms"], info["auth"]) == (64, 2.0, True)
    assert (info["max_answer_docs"], info["max_answer_bytes"], info["max_batch_docs"]) == (7, 123456, 99)
    assert (info["header_timeout_s"], info["body_timeout_s"], info["keep_alive_s"]) == (4, 6, 3)

    local = get_retriever("Textbooks", "BM25", db_dir=str(db))
    url = base + "/retrieve"
    r = requests.post(url, json={"queries": ["sepsis fever"], "return_scores": True}, headers=auth, timeout=30)
    assert r.json() == local.retrieve(["sepsis fever"], 2, True)  # --topk is the default
    r = requests.post(url, json={"queries": ["sepsis"], "topk": 5}, headers=auth, timeout=30)
    assert r.status_code == 400 and r.json()["field"] == "topk" and "1 to 4" in r.json()["error"]
    r = requests.post(url, json={"queries": ["a", "b", "c", "d"]}, headers=auth, timeout=30)
    assert r.status_code == 400 and r.json()["field"] == "queries" and "max_batch=3" in r.json()["error"]
    r = requests.post(url, json={"queries": ["x" * 51]}, headers=auth, timeout=30)
    assert r.status_code == 400 and r.json()["field"] == "queries[0]"
    r = requests.post(url, json={"queries": ["a", "b"], "topk": 4}, headers=auth, timeout=30)  # 2 x 4 > 7
    assert r.status_code == 413 and "max_answer_docs=7" in r.json()["error"]
    r = requests.post(url, json={"queries": ["sepsis"], "topk": 4, "return_scores": True}, timeout=30)
    assert r.status_code == 401

    assert p.terminate() == 0  # graceful SIGTERM
    assert not p.address_file.exists()
    out = p.output()
    assert "ready at http://127.0.0.1:%d" % port in out


def test_dense_retriever_flags_and_a_client_waiting_for_the_address_file(tmp_path, serve_process, serve_corpus,
                                                                         tiny_bert_dir):
    addr = tmp_path / "dense.addr"
    local = get_retriever(str(serve_corpus), retriever_name=str(tiny_bert_dir), pooling="cls")
    remote = Retriever(RetrieverConfig(corpus_name="remote", backend="http", address_file=str(addr), timeout=60))
    queries = ["sepsis mortality elderly", "insulin potassium", "sepsis mortality elderly"]
    result: dict = {}
    waiter = threading.Thread(target=lambda: result.update(got=remote.retrieve(queries, 5)))
    waiter.start()  # the client starts before the server and waits for its address file
    p = serve_process("--corpus", str(serve_corpus), "--retriever", str(tiny_bert_dir), "--pooling", "cls",
                      address_file=addr)
    waiter.join(90)
    assert result["got"] == local.retrieve(queries, 5)
    info = remote.info()
    assert info["index"] == local.info()["index"] and info["index"][0].startswith("dense")
    assert info["retriever"] == str(tiny_bert_dir) and info["auth"] is False
    assert p.terminate() == 0 and not addr.exists()


def test_token_from_the_environment(serve_process, serve_corpus):
    p = serve_process("--corpus", str(serve_corpus), env={"MEDRET_TOKEN": "envtok"})
    base = p.wait_address()
    assert requests.post(base + "/retrieve", json={"queries": ["sepsis"]}, timeout=30).status_code == 401
    ok = requests.post(base + "/retrieve", json={"queries": ["sepsis"]}, timeout=30,
                       headers={"Authorization": "Bearer envtok"})
    assert ok.status_code == 200 and len(ok.json()["result"][0]) == 3
    assert p.terminate() == 0


def test_engine_that_cannot_load_stops_the_server_with_an_error(tmp_path, serve_process):
    p = serve_process("--corpus", str(tmp_path / "no-such-corpus"))
    assert p.proc.wait(60) == 1
    assert not p.address_file.exists()
    assert "no-such-corpus" in p.output()


@pytest.mark.parametrize("flags,message", [
    (["--topk", "0"], "--topk=0"),
    (["--topk", "9", "--max-topk", "5"], "--topk=9"),
    (["--max-wait-ms", "-1"], "max_wait_ms=-1"),
    (["--max-batch-queries", "0"], "max_batch_queries=0"),
    (["--max-topk", "0"], "max_topk=0"),
    (["--port", "70000"], "port=70000"),
    (["--host", "no.such.host.invalid"], "host="),
])
def test_bad_flags_fail_before_serving(flags, message, capsys):
    assert main(["serve", *flags]) == 1
    assert message in capsys.readouterr().err


def test_port_in_use_is_a_clear_error(capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 1
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
