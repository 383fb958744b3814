"""The HTTP client caps the answer it reads by ``max_answer_bytes``, the same setting (and meaning) as the server's
limit (issue 24 item 11). Before: a server announcing a 100 GB Content-Length gave a raw MemoryError, and an endless
chunked body grew the client to 2.1 GB in 5 s, bounded only by the deadline. Real loopback servers; memory judged
by a child process's own peak RSS (VmHWM)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medret import get_retriever
from medret.api import clear_cache
from medret.config import HttpOptions, RetrieverConfig
from medret.errors import TransportError
from medret.transports import make_transport
from medret.transports.http import HttpTransport
from tests.hubfake import EndlessServer, RawServer

ROOT = Path(__file__).resolve().parents[2]
CAP = 1 << 20


class HugeLengthServer(RawServer):
    """Answers every request with ``Content-Length: 100000000000`` and a few bytes, then holds the connection."""

    def __init__(self):
        self.requests = 0
        super().__init__()
        self.url = self.endpoint

    def answer(self, conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            self.requests += 1
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000000000\r\n\r\n"
                         + b'{"result": [[' + b" " * 1000)
            self.stop.wait(30)


@pytest.fixture
def huge():
    s = HugeLengthServer()
    yield s
    s.close()


def test_announced_100_gb_answer_is_refused_at_once_without_retries(huge):
    t = HttpTransport(HttpOptions(url=huge.url, max_answer_bytes=CAP, timeout=20, retries=3))
    start = time.monotonic()
    with pytest.raises(TransportError) as err:
        t.search(["sepsis"], 3)
    assert time.monotonic() - start < 5  # not the 20 s deadline: refused when the head arrived
    msg = str(err.value)
    assert "100,000,000,000 bytes (Content-Length)" in msg and f"max_answer_bytes={CAP}" in msg
    assert "smaller topk" in msg
    assert huge.requests == 1  # the same request would get the same answer: not retried


def test_the_retriever_setting_reaches_the_http_transport(huge):
    """One setting: ``max_answer_bytes`` of the retriever's config is the server's limit and the client's cap."""
    config = RetrieverConfig(backend="http", url=huge.url, max_answer_bytes=2 * CAP, retries=0)
    assert make_transport(config).config.max_answer_bytes == 2 * CAP  # type: ignore[attr-defined]
    try:
        r = get_retriever(backend="http", url=huge.url, max_answer_bytes=2 * CAP, retries=0, timeout=20)
        with pytest.raises(TransportError, match=f"max_answer_bytes={2 * CAP}"):
            r.retrieve(["sepsis"], topk=3)
    finally:
        clear_cache()


_CHILD = """
import sys, time
from medret.config import HttpOptions
from medret.errors import TransportError
from medret.transports.http import HttpTransport
t = HttpTransport(HttpOptions(url=sys.argv[1], max_answer_bytes=int(sys.argv[2]), timeout=60, retries=2))
def peak_kb():  # this program's own peak RSS (kB)
    with open("/proc/self/status") as f:
        return next(line.split()[1] for line in f if line.startswith("VmHWM:"))
before = peak_kb()  # python + medret + what this environment's imports bring
start = time.monotonic()
try:
    t.search(["sepsis"], 3)
    print("no error")
except TransportError as e:
    print(f"{time.monotonic() - start:.2f}", e)
print(before, peak_kb())
"""


@pytest.mark.parametrize("chunked", [True, False])
def test_endless_body_is_cut_at_the_cap_with_bounded_memory(chunked):
    with EndlessServer(chunked=chunked, content_type="application/json") as endless:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen([sys.executable, "-c", _CHILD, endless.endpoint, str(8 * CAP)], env=env,
                                stdout=subprocess.PIPE, text=True)
        out = proc.stdout.read()  # type: ignore[union-attr]
        proc.wait()
    assert proc.returncode == 0, out
    answer, peaks = out.strip().rsplit("\n", 1)
    before_kb, peak_kb = (int(v) for v in peaks.split())
    seconds, _, msg = answer.partition(" ")
    assert float(seconds) < 10, out  # not the 60 s deadline
    assert f"larger than max_answer_bytes={8 * CAP} bytes" in msg
    assert endless.requests == 1  # not retried
    # the client held about the cap (8 MiB): its peak grew by far less than 64 MiB over what its imports took (the
    # environments differ there: ~60 MB in dev, ~140 MB in Search-R1's), far from what was on offer
    assert (peak_kb - before_kb) * 1024 < 64 * 1024 * 1024, (before_kb, peak_kb)
