"""medret.compat: one place for the differences between supported versions, tested in every CI environment
(dev: Python 3.11, transformers 5, hub 1.x+, numpy 2; searchr1: Python 3.9, transformers 4.47, hub 0.x, numpy 1;
verl: Python 3.11, transformers 5.10, numpy 2)."""
from __future__ import annotations

import ast
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from medret import compat

REPO = Path(__file__).resolve().parents[2]
SOURCES = sorted(p for d in ("medret", "tests", "benchmarks", "scripts") for p in (REPO / d).rglob("*.py"))


# ---------------------------------------------------------------------------------------------------------------------
# Python 3.9


def test_sources_found():
    names = {p.relative_to(REPO).as_posix() for p in SOURCES}
    assert {"medret/compat.py", "medret/api.py", "tests/conftest.py"} <= names


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_source_parses_with_python39_grammar(path: Path):
    ast.parse(path.read_text(encoding="utf-8"), str(path), feature_version=(3, 9))


def _new_style_annotations(tree: ast.AST) -> list[int]:
    """Lines of annotations that Python 3.9 cannot evaluate: ``X | Y`` (PEP 604)."""
    anns: list[ast.AST] = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            a = node.args
            anns += [x.annotation for x in a.posonlyargs + a.args + a.kwonlyargs if x.annotation is not None]
            anns += [x.annotation for x in (a.vararg, a.kwarg) if x is not None and x.annotation is not None]
            if node.returns is not None:
                anns.append(node.returns)
        elif isinstance(node, ast.AnnAssign):
            anns.append(node.annotation)
    return sorted({n.lineno for a in anns for n in ast.walk(a) if isinstance(n, ast.BinOp)
                   and isinstance(n.op, ast.BitOr)})


def _has_future_annotations(tree: ast.Module) -> bool:
    return any(isinstance(n, ast.ImportFrom) and n.module == "__future__" and any(a.name == "annotations"
                                                                                  for a in n.names)
               for n in tree.body)


def test_pep604_check_sees_both_cases():
    with_future = ast.parse("from __future__ import annotations\ndef f(x: int | None) -> str | None: ...\n")
    without = ast.parse("import os\nclass A:\n    x: int | None = None\n")
    assert _new_style_annotations(with_future) == [2] and _has_future_annotations(with_future)
    assert _new_style_annotations(without) == [3] and not _has_future_annotations(without)
    assert _new_style_annotations(ast.parse("def f(x: 'int | None', y=1 | 2): ...")) == []


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_union_annotations_are_postponed(path: Path):
    """``int | None`` in an annotation is evaluated at import on 3.9 unless the module postpones annotations."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    lines = _new_style_annotations(tree)
    assert not lines or _has_future_annotations(tree), \
        f"{path}: lines {lines} annotate with X | Y; add `from __future__ import annotations` (Python 3.9)"


# ---------------------------------------------------------------------------------------------------------------------
# versions, transformers


@pytest.mark.parametrize("text, expected", [
    ("4.47.1", (4, 47, 1)), ("2.4.0+cu121", (2, 4, 0)), ("5.0.0rc1", (5, 0, 0)), ("1.26", (1, 26)),
    ("0.36.0.dev0", (0, 36, 0)), ("2.13.0+cpu", (2, 13, 0)), ("abc", ()),
])
def test_parse_version(text, expected):
    assert compat.parse_version(text) == expected


def test_version_tuple_of_installed_and_absent():
    import numpy as np

    assert compat.version_tuple("numpy") == compat.parse_version(np.__version__)
    assert compat.version_tuple("no-such-distribution-medret") == ()


@pytest.mark.parametrize("version, key", [((4, 40, 0), "torch_dtype"), ((4, 47, 1), "torch_dtype"),
                                          ((4, 55, 4), "torch_dtype"), ((4, 56, 0), "dtype"), ((5, 10, 2), "dtype")])
def test_dtype_kwargs_by_version(version, key):
    assert compat.dtype_kwargs("X", version) == {key: "X"}


def test_dtype_kwargs_loads_half_precision_with_installed_transformers(tiny_bert_dir):
    """The keyword is honoured by the installed transformers: the weights come back in float16, not float32
    (a keyword it did not know would raise, or be ignored and leave float32)."""
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(tiny_bert_dir, **compat.dtype_kwargs(torch.float16))
    assert {p.dtype for p in model.parameters()} == {torch.float16}
    model = AutoModel.from_pretrained(tiny_bert_dir, **compat.dtype_kwargs(torch.float32))
    assert {p.dtype for p in model.parameters()} == {torch.float32}


# ---------------------------------------------------------------------------------------------------------------------
# HTTP through huggingface_hub's session (httpx in hub 1.x, requests in hub 0.x)

BODY = bytes(range(256)) * 4096  # 1 MiB


class _Server:
    """/file: BODY (Range honoured); /moved: 302 to /file on the other loopback name; /drop: headers, half, close."""

    def __init__(self):
        body = BODY

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _send(self, head: bool):
                if self.path == "/moved":
                    self.send_response(302)
                    self.send_header("Location", f"http://localhost:{self.server.server_port}/file")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if self.path not in ("/file", "/drop"):
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start = 0
                rng = self.headers.get("Range")
                if rng and self.path == "/file":
                    start = int(rng.split("=")[1].split("-")[0])
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(body) - start))
                self.send_header("X-Medret-Test", "yes")
                self.end_headers()
                if head:
                    return
                if self.path == "/drop":
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                self.wfile.write(body[start:])

            def do_GET(self):
                self._send(head=False)

            def do_HEAD(self):
                self._send(head=True)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def _sessions():
    out = []
    requests = pytest.importorskip("requests")
    out.append(pytest.param(requests.Session, id="requests"))
    try:
        import httpx
    except ImportError:
        pass
    else:
        out.append(pytest.param(lambda: httpx.Client(follow_redirects=True), id="httpx"))
    out.append(pytest.param(compat.hub_session, id="huggingface_hub"))
    return out


@pytest.fixture(scope="module")
def server():
    with _Server() as s:
        yield s


@pytest.mark.parametrize("make_session", _sessions())
def test_stream_head_and_errors(server, make_session):
    session = make_session()
    with compat.http_stream(session, server.base + "/moved", {"Accept-Encoding": "identity"}) as resp:
        assert resp.status_code == 200 and resp.headers.get("x-medret-test") == "yes"
        assert b"".join(resp.iter_bytes()) == BODY
    with compat.http_stream(session, server.base + "/file", {"Range": "bytes=1000-"}) as resp:
        assert resp.status_code == 206 and int(resp.headers.get("Content-Length")) == len(BODY) - 1000
        assert b"".join(resp.iter_bytes()) == BODY[1000:]
    with compat.http_stream(session, server.base + "/nothing") as resp:
        assert resp.status_code == 404
    status, headers = compat.http_head(session, server.base + "/moved", {"Accept-Encoding": "identity"})
    assert status == 200 and int(headers.get("Content-Length")) == len(BODY)

    errors = compat.http_transport_errors(session)
    got = b""
    with pytest.raises(errors):
        with compat.http_stream(session, server.base + "/drop") as resp:
            for block in resp.iter_bytes():
                got += block
        if len(got) < len(BODY):  # a client that ends the body quietly: medret treats a short body the same way
            raise ConnectionError(f"short body: {len(got)} of {len(BODY)}")
    with pytest.raises(errors):
        with compat.http_stream(session, f"http://127.0.0.1:{_closed_port()}/file") as resp:
            b"".join(resp.iter_bytes())


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_session_kind_is_told_apart():
    requests = pytest.importorskip("requests")
    assert not compat.is_httpx_session(requests.Session())  # its .stream is a bool
    hub_major = compat.version_tuple("huggingface_hub")[:1]
    if hub_major:
        assert compat.is_httpx_session(compat.hub_session()) == (hub_major >= (1,))
