"""HTTP client deadlines (issue 13, item 9): against a real server that trickles its answer one byte at a time,
every medret HTTP caller gives up with a clear error by its deadline — judged by the server's own progress (it
had not finished sending when the client returned), not by timing medret."""
from __future__ import annotations

import socket
import threading

import pytest

from medret.api import Retriever
from medret.config import RetrieverConfig
from medret.errors import TransportError
from tests.hubfake import RawServer

BODY = b'{"result": [[]]}' + b" " * 84  # valid JSON once complete: 100 bytes


class TrickleServer(RawServer):
    """Answers every connection with a 200 whose head and body (HEAD_BYTES + 100 bytes) are sent one byte every
    `interval` seconds (about 15 s in all), recording how far it got."""

    def __init__(self, interval: float = 0.1):
        self.interval = interval
        self.sent = 0            # bytes sent on the latest connection
        self.finished = threading.Event()  # some connection got its whole answer
        super().__init__()
        self.url = f"{self.endpoint}/retrieve"

    @property
    def reply(self) -> bytes:
        return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(BODY)
                + BODY)

    def answer(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(30)
            data = b""
            try:
                while b"\r\n\r\n" not in data:  # the request head (the body is not needed)
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                self.sent = 0
                for i in range(len(self.reply)):
                    if self.stop.wait(self.interval):
                        return
                    conn.sendall(self.reply[i:i + 1])
                    self.sent = i + 1
                self.finished.set()
            except OSError:  # the client gave up and closed the connection
                return

@pytest.fixture
def trickle():
    srv = TrickleServer()
    yield srv
    srv.close()


def test_http_backend_gives_up_after_timeout_for_the_whole_answer(trickle):
    r = Retriever(RetrieverConfig(corpus_name="remote", backend="http", url=trickle.url, timeout=1.0, retries=0))
    with pytest.raises(TransportError) as e:
        r.retrieve(["sepsis"], 3)
    assert not trickle.finished.is_set() and 0 < trickle.sent < len(trickle.reply)  # gave up mid-answer
    msg = str(e.value)
    assert "after 1 attempt(s)" in msg and "Timeout: no complete answer within timeout=1s" in msg


def test_total_timeout_bounds_every_attempt_together(trickle, monkeypatch):
    from medret.transports.http import HttpTransport

    monkeypatch.setattr(HttpTransport, "backoff_base", 0.01)
    r = Retriever(RetrieverConfig(corpus_name="remote", backend="http", url=trickle.url, timeout=1.0, retries=5,
                                  total_timeout=2.5))
    with pytest.raises(TransportError) as e:
        r.search(["sepsis"], 3)
    msg = str(e.value)
    assert "stopped retrying: total_timeout=2.5s reached" in msg
    # fewer attempts than 1 + retries = 6 were made, and none got its answer
    assert 2 <= trickle.connections < 6 and not trickle.finished.is_set()
    assert f"after {trickle.connections} attempt(s)" in msg


def test_search_r1_http_path_has_a_total_deadline(trickle):
    from medret.integrations import searchr1_runtime as rt

    with pytest.raises(TransportError, match=r"sent no complete answer within timeout=1s"):
        rt.batch_search({"url": trickle.url, "timeout": 1.0}, ["sepsis"])
    assert not trickle.finished.is_set() and trickle.sent < len(trickle.reply)


def test_doctor_health_check_has_a_total_deadline(trickle):
    from medret.doctor import check_server

    [c] = check_server(trickle.url.rsplit("/", 1)[0], None, timeout=1.0)
    assert c.status == "fail" and "does not answer /health" in c.title
    assert not trickle.finished.is_set() and trickle.sent < len(trickle.reply)


def test_a_whole_answer_within_the_deadline_is_read(monkeypatch):
    """The deadline does not cut a slow but timely answer: the same trickle, 100x faster, within timeout=30."""
    srv = TrickleServer(interval=0.001)
    try:
        r = Retriever(RetrieverConfig(corpus_name="remote", backend="http", url=srv.url, timeout=30, retries=0))
        assert r.retrieve(["sepsis"], 3) == {"result": [[]]}
        assert srv.finished.wait(10)
    finally:
        srv.close()
