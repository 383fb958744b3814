"""Issue 13, item 11: tokens (ASCII only, refused at start-up otherwise; from a file or the environment, never
the command line), a warning when serving beyond loopback without one, the http backend checking the shape of
every answer, and connections that never finish their request head being closed."""
from __future__ import annotations

import socket
import threading

import orjson
import pytest
import requests

from medret.api import Retriever
from medret.cli import main
from medret.config import RetrieverConfig
from medret.errors import ConfigError, TransportError
from medret.serve.app import ServeSettings
from medret.serve.server import is_loopback


# ------------------------------------------------------------------------------------------------ tokens
@pytest.mark.parametrize("token,what", [("pässwort", "a non-ASCII character at position 1"),
                                        ("tök€n", "a non-ASCII character at position 1"),
                                        ("two words", "a space or control character at position 3"),
                                        ("tab\there", "a space or control character at position 3")])
def test_a_token_that_http_cannot_carry_is_refused_at_start_up(token, what, tmp_path, capsys, monkeypatch):
    with pytest.raises(ConfigError, match=what):
        ServeSettings(token=token)
    # the client refuses it when built, not with a UnicodeEncodeError on its first search
    with pytest.raises(ConfigError, match=what):
        Retriever(RetrieverConfig(corpus_name="x", backend="http", url="http://127.0.0.1:9", token=token))
    f = tmp_path / "token"
    f.write_text(token + "\n", encoding="utf-8")
    assert main(["serve", "--token-file", str(f)]) == 1
    err = capsys.readouterr().err
    assert what in err and token not in err  # the message never shows the token
    monkeypatch.setenv("MEDRET_TOKEN", token)
    assert main(["serve"]) == 1 and "$MEDRET_TOKEN has " + what in capsys.readouterr().err


def test_a_token_on_the_command_line_is_refused(capsys):
    assert main(["serve", "--token", "s3cret"]) == 1
    err = capsys.readouterr().err
    assert "visible to every user" in err and "--token-file" in err and "MEDRET_TOKEN" in err


def test_an_unreadable_token_file_is_a_clear_error(tmp_path, capsys):
    assert main(["serve", "--token-file", str(tmp_path / "missing")]) == 1
    assert "--token-file=" in capsys.readouterr().err


@pytest.mark.parametrize("host,expected", [("127.0.0.1", True), ("127.3.4.5", True), ("::1", True),
                                           ("localhost", True), ("0.0.0.0", False), ("::", False)])
def test_is_loopback(host, expected):
    assert is_loopback(host) is expected


@pytest.mark.integration
def test_serving_beyond_loopback_without_a_token_warns(serve_process, serve_corpus, tmp_path):
    open_ = serve_process("--corpus", str(serve_corpus), "--host", "0.0.0.0")
    open_.wait_address()
    (tmp_path / "tok").write_text("s3cret")
    guarded = serve_process("--corpus", str(serve_corpus), "--host", "0.0.0.0", "--token-file",
                            str(tmp_path / "tok"))
    guarded.wait_address()
    local = serve_process("--corpus", str(serve_corpus))
    local.wait_address()
    for p in (open_, guarded, local):
        assert p.terminate() == 0
    assert "without a token: anyone who can reach this port can search" in open_.output()
    assert "without a token" not in guarded.output() and "without a token" not in local.output()


# ------------------------------------------------------------------------------------------------ answer shape
class FixedAnswer:
    """A tiny HTTP server answering every request with 200 and the given JSON body."""

    def __init__(self, body: bytes):
        self.body = body
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/retrieve"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                head, _, rest = data.partition(b"\r\n\r\n")
                length = int([h.split(b":")[1] for h in head.split(b"\r\n") if h.lower().startswith(
                    b"content-length")][0])
                while len(rest) < length:
                    rest += conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                             b"Content-Length: %d\r\n\r\n" % len(self.body) + self.body)

    def close(self) -> None:
        self.sock.close()


DOC = {"id": "a", "title": "T", "contents": '"T"\ntext'}


@pytest.mark.parametrize("result,scores,problem", [
    ([["x"]], True, "result[0][0] is a str, not an object"),
    ([[{"document": DOC, "score": "high"}]], True, "no numeric 'score'"),
    ([[{"document": DOC}]], True, "no numeric 'score'"),
    ([[{"doc": DOC, "score": 1.0}]], True, "result[0][0].document is not a document"),
    ([[{"document": {"id": "a"}, "score": 1.0}]], True, "not a document with a 'contents' string"),
    ([[{"document": DOC, "score": 1.0}] * 4], True, "result[0] has 4 items for topk 3"),
    ([{"document": DOC, "score": 1.0}], True, "result[0] is a dict, not a list"),
    ([[{"id": "a"}]], False, "result[0][0] is not a document with a 'contents' string"),
    ([[DOC], [DOC]], False, "2 result lists for 1 queries"),
])
def test_http_retrieve_checks_the_answer_shape_as_search_does(result, scores, problem):
    srv = FixedAnswer(orjson.dumps({"result": result}))
    try:
        r = Retriever(RetrieverConfig(corpus_name="x", backend="http", url=srv.url, retries=0))
        with pytest.raises(TransportError, match="unexpected shape") as e:
            r.retrieve(["sepsis"], 3, return_scores=scores)
        assert problem in str(e.value)
    finally:
        srv.close()


def test_http_retrieve_accepts_search_r1_documents_without_id():
    """Search-R1's own server answers documents {"title", "text", "contents"}: valid."""
    doc = {"title": "T", "text": "text", "contents": '"T"\ntext'}
    srv = FixedAnswer(orjson.dumps({"result": [[{"document": doc, "score": 2}]]}))
    try:
        r = Retriever(RetrieverConfig(corpus_name="x", backend="http", url=srv.url, retries=0))
        assert r.retrieve(["sepsis"], 3) == {"result": [[{"document": doc, "score": 2}]]}
    finally:
        srv.close()


# ------------------------------------------------------------------------------------------------ idle connections
def _closed_by_server(sock: socket.socket) -> bool:
    """True once the server closed the connection (read returns EOF or a reset); the timeout only guards."""
    sock.settimeout(60)
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True


def test_a_connection_that_never_finishes_its_request_head_is_closed(serve_corpus, serve_thread):
    srv = serve_thread(RetrieverConfig(corpus_name=str(serve_corpus)), ServeSettings(header_timeout_s=0.5))
    port = int(srv.base.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"POST /retrieve HTTP/1.1\r\nHost: x\r\n")  # and never the rest
        assert _closed_by_server(s)
    with socket.create_connection(("127.0.0.1", port)) as s:  # connects and sends nothing at all
        assert _closed_by_server(s)
    # a request head sent one byte at a time, each byte well within the timeout but the head as a whole not:
    # the server closes the connection before the head is complete (judged by how far the client got)
    head = b"POST /retrieve HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"p" * 200 + b"\r\n\r\n"
    sent = 0
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.settimeout(0.05)
        try:
            for i in range(len(head)):
                s.sendall(head[i:i + 1])
                sent = i + 1
                try:
                    if s.recv(1024) == b"":
                        break  # closed by the server
                except socket.timeout:
                    pass
        except (BrokenPipeError, ConnectionResetError):
            pass
    assert sent < len(head), "the server waited for a head trickled over far longer than header_timeout"
    # the server still answers whole requests, also a second one on a kept-alive connection
    with requests.Session() as session:
        for _ in range(2):
            assert session.post(srv.url, json={"queries": ["sepsis"]}, timeout=30).status_code == 200


def test_a_kept_alive_connection_that_stalls_in_its_next_head_is_closed(serve_corpus, serve_thread):
    srv = serve_thread(RetrieverConfig(corpus_name=str(serve_corpus)),
                       ServeSettings(header_timeout_s=0.5, keep_alive_s=600))
    port = int(srv.base.rsplit(":", 1)[1])
    body = b'{"queries": ["sepsis"]}'
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"POST /retrieve HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                  b"\r\n" % len(body) + body)
        s.settimeout(60)
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += s.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200")
        length = int(answer.split(b"content-length: ")[1].split(b"\r\n")[0])
        rest = answer.partition(b"\r\n\r\n")[2]
        while len(rest) < length:
            rest += s.recv(65536)
        s.sendall(b"POST /retrieve HTTP/1.1\r\nHo")  # the next request's head stops half-way
        assert _closed_by_server(s)


def test_a_body_that_never_arrives_whole_is_answered_408(serve_corpus, serve_thread):
    srv = serve_thread(RetrieverConfig(corpus_name=str(serve_corpus)), ServeSettings(body_timeout_s=0.5))
    port = int(srv.base.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"POST /retrieve HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"queries\"")
        s.settimeout(60)
        answer = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408") and b"--body-timeout" in answer
