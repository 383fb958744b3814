"""Fixtures for the Search-R1 / veRL integration tests."""
from __future__ import annotations

import json
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures"
FAKE_CHECKOUT = FIXTURES / "searchr1_fake"
TRAINER_CONFIG = FIXTURES / "ppo_trainer_subset.yaml"


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A fresh copy of the Search-R1-shaped fixture tree."""
    root = tmp_path / "Search-R1"
    shutil.copytree(FAKE_CHECKOUT, root, ignore=shutil.ignore_patterns("__pycache__", "*.medret-orig"))
    return root


class RetrieveServer:
    """A real HTTP server on loopback speaking Search-R1's /retrieve protocol, answering from medret's sample
    corpus (BM25). It records every request body so tests can check what the client sent."""

    def __init__(self, delay: float = 0.0, status: int = 200, raw_body: bytes | None = None) -> None:
        self.requests: list[dict[str, Any]] = []
        self.paths: list[str] = []  # the path (and query) of every POST, as sent
        self.delay = delay
        self.status = status
        self.raw_body = raw_body
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                server.requests.append(body)
                server.paths.append(self.path)
                if server.delay:
                    time.sleep(server.delay)
                if server.raw_body is not None:
                    data = server.raw_body
                else:
                    from medret import get_retriever

                    r = get_retriever(corpus_name="sample", retriever_name="BM25", backend="local")
                    data = json.dumps(r.retrieve(body["queries"], topk=body["topk"],
                                                 return_scores=body.get("return_scores", True))).encode()
                try:
                    self.send_response(server.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout tests)
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/retrieve"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "RetrieveServer":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def retrieve_server() -> Iterator[RetrieveServer]:
    with RetrieveServer() as server:
        yield server


def closed_port_url() -> str:
    """A loopback URL nobody listens on."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}/retrieve"


def searchr1_format(docs: list[dict]) -> str:
    """Search-R1's passage rendering, written out independently for the tests."""
    out = ""
    for i, item in enumerate(docs):
        lines = item["document"]["contents"].split("\n")
        out += "Doc " + str(i + 1) + "(Title: " + lines[0] + ") " + "\n".join(lines[1:]) + "\n"
    return out


def verl_format(docs: list[dict]) -> str:
    """veRL's search-tool rendering of one query, written out independently for the tests."""
    out = ""
    for i, item in enumerate(docs):
        lines = item["document"]["contents"].split("\n")
        out += "Doc " + str(i + 1) + " (Title: " + lines[0] + ")\n" + "\n".join(lines[1:]) + "\n\n"
    return out.strip()


class Helpers:
    """The plain helpers above, handed to tests as a fixture (pytest's importlib mode cannot import conftest)."""

    RetrieveServer = RetrieveServer
    closed_port_url = staticmethod(closed_port_url)
    searchr1_format = staticmethod(searchr1_format)
    verl_format = staticmethod(verl_format)
    FAKE_CHECKOUT = FAKE_CHECKOUT
    TRAINER_CONFIG = TRAINER_CONFIG


@pytest.fixture
def helpers() -> type[Helpers]:
    return Helpers
