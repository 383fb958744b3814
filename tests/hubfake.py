"""Local HTTP servers standing in for the Hugging Face hub and for MedRAG's archive host (no internet in tests).

:class:`FakeHub` speaks what huggingface_hub's ``HfApi.model_info`` / ``dataset_info`` / ``list_repo_tree`` and
medret's downloader call: ``/api/{models|datasets}/{repo}[/revision/{rev}]``, ``/api/.../tree/{rev}[/{path}]``
(recursive or not) and the ``resolve`` URLs (``/{repo}/resolve/...`` for models, ``/datasets/{repo}/resolve/...``),
where LFS files are redirected to a storage host, as the hub does. ``static`` files are served under ``/mirror/``
through a redirect to ``/blob/`` (as SharePoint's ``?download=1`` links redirect), with Range support.
Faults per served path: drop the connection once after N bytes, flip the first or any byte. Every request is logged.

:class:`DownServer` answers every request with 503 and counts them: a hub behind a proxy that refuses.
:class:`SilentServer` accepts connections and never answers (a firewall or proxy that swallows them).
:class:`RawServer` is the TCP server under answers no HTTP library would send: SilentServer's here, and the
HTTP client tests' (a 100 GB Content-Length, an answer trickled a byte at a time).
:class:`EndlessServer` answers 200 with no size and sends zeros until the client goes (no Content-Length, or chunked).
FakeHub's ``stall`` fault sends a served path up to an offset and then nothing more, holding the connection.
"""
from __future__ import annotations

import hashlib
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

COMMIT = "c" * 40
LFS_MIN = 2048  # files this large are LFS files (sha256 checked); smaller ones are plain git files (blob id)


def sha256(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def git_blob(b: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(b) + b).hexdigest()


def lfs_pointer(b: bytes) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256(b)}\nsize {len(b)}\n".encode()


class _Server:
    def _start(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = self.server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class FakeHub(_Server):
    def __init__(self, repos: dict[tuple[str, str], dict[str, bytes]] | None = None,
                 static: dict[str, bytes] | None = None):
        self.repos = {k: dict(v) for k, v in (repos or {}).items()}  # (kind "model"|"dataset", repo id) -> files
        self.static = dict(static or {})
        self.drop_once: dict[str, int] = {}  # served path -> byte offset after which the connection drops, once
        self.corrupt: set[str] = set()  # served paths sent with their first byte flipped
        self.flip: dict[str, int] = {}  # served path -> offset of a byte sent flipped
        self.stall: dict[str, int] = {}  # served path -> offset after which nothing more is sent (every time)
        self.released = threading.Event()  # set by close(): stalled handlers end
        self.log: list[dict] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_HEAD(self):
                self._route(head=True)

            def do_GET(self):
                self._route(head=False)

            def _json(self, obj, status=200):
                body = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _redirect(self, location: str, extra: dict[str, str] | None = None):
                self.send_response(302)
                self.send_header("Location", location)
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _route(self, head: bool):
                url = urlparse(self.path)
                path = unquote(url.path)
                query = parse_qs(url.query)
                hub.log.append({"method": self.command, "path": path, "range": self.headers.get("Range"),
                                "auth": self.headers.get("Authorization")})
                if path.startswith("/mirror/"):
                    name = path[len("/mirror/"):]
                    if name not in hub.static:
                        return self._json({"error": "not found"}, 404)
                    return self._redirect(f"http://localhost:{hub.port}/blob/{name}")
                if path.startswith("/blob/"):
                    name = path[len("/blob/"):]
                    return self._bytes(path, hub.static[name], head)
                if path.startswith("/lfs/"):
                    kind, rest = path[len("/lfs/"):].split("/", 1)
                    repo, fpath = hub._split(kind, rest)
                    return self._bytes(path, hub.repos[(kind, repo)][fpath], head)
                for kind in ("model", "dataset"):
                    api = f"/api/{kind}s/"
                    if path.startswith(api):
                        found = hub._split(kind, path[len(api):])
                        if found is None:
                            return self._json({"error": "Repository not found"}, 404)
                        repo, rest = found
                        if rest == "" or rest.startswith("revision/"):
                            return self._json({"id": repo, "sha": COMMIT, "private": False,
                                               "siblings": [{"rfilename": p} for p in sorted(hub.repos[(kind, repo)])]})
                        if rest.startswith("tree/"):
                            _, _, sub = rest[len("tree/"):].partition("/")
                            recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
                            return self._json(hub.tree(kind, repo, sub, recursive))
                        return self._json({"error": "not found"}, 404)
                resolve = path[len("/datasets/"):] if path.startswith("/datasets/") else path[1:]
                kind = "dataset" if path.startswith("/datasets/") else "model"
                found = hub._split(kind, resolve)
                if found is not None and found[1].startswith("resolve/"):
                    repo, rest = found
                    _, _, fpath = rest[len("resolve/"):].partition("/")
                    files = hub.repos[(kind, repo)]
                    if fpath not in files:
                        return self._json({"error": "Entry not found"}, 404)
                    data = files[fpath]
                    if len(data) >= LFS_MIN:
                        return self._redirect(f"http://localhost:{hub.port}/lfs/{kind}/{repo}/{fpath}",
                                              {"X-Repo-Commit": COMMIT, "X-Linked-Etag": f'"{sha256(data)}"',
                                               "X-Linked-Size": str(len(data)),
                                               "ETag": f'"{git_blob(lfs_pointer(data))}"'})
                    return self._bytes(path, data, head)
                return self._json({"error": "not found"}, 404)

            def _bytes(self, served: str, data: bytes, head: bool):
                if served in hub.corrupt:
                    data = bytes([data[0] ^ 0x01]) + data[1:]
                if served in hub.flip:
                    i = hub.flip[served]
                    data = data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1:]
                start = 0
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes="):
                    start = int(rng[len("bytes="):].split("-")[0])
                body = data[start:]
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("X-Repo-Commit", COMMIT)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if head:
                    return
                if served in hub.stall:
                    stop = hub.stall[served]
                    if stop > start:
                        self.wfile.write(body[: stop - start])
                        self.wfile.flush()
                    hub.released.wait(60)  # hold the connection, silent, until the test is over
                    self.close_connection = True
                    return
                cut = hub.drop_once.pop(served, None)
                if cut is not None and cut >= start:
                    self.wfile.write(body[: cut - start])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.wfile.write(body)

        self._start(Handler)

    def close(self) -> None:
        self.released.set()
        super().close()

    def _split(self, kind: str, rest: str) -> tuple[str, str] | None:
        """(repo id, the rest of the path) for a path that starts with a known repo id of ``kind``."""
        for k, repo in self.repos:
            if k == kind and (rest == repo or rest.startswith(repo + "/")):
                return repo, rest[len(repo) + 1:]
        return None

    def tree(self, kind: str, repo: str, sub: str, recursive: bool) -> list[dict]:
        out, dirs = [], set()
        for p, data in sorted(self.repos[(kind, repo)].items()):
            if sub and not p.startswith(sub + "/"):
                continue
            rel = p[len(sub) + 1:] if sub else p
            if "/" in rel and not recursive:
                dirs.add((sub + "/" if sub else "") + rel.split("/", 1)[0])
                continue
            entry = {"type": "file", "path": p, "size": len(data),
                     "oid": git_blob(lfs_pointer(data)) if len(data) >= LFS_MIN else git_blob(data)}
            if len(data) >= LFS_MIN:
                entry["lfs"] = {"oid": sha256(data), "size": len(data), "pointerSize": len(lfs_pointer(data))}
            out.append(entry)
        out += [{"type": "directory", "oid": "d" * 40, "size": 0, "path": d} for d in sorted(dirs)]
        return out

    def gets(self, prefix: str) -> list[dict]:
        return [e for e in self.log if e["method"] == "GET" and e["path"].startswith(prefix)]


class DownServer(_Server):
    """Answers 503 to everything (a proxy refusing, a hub that is down) and records the paths asked for."""

    def __init__(self):
        self.paths: list[str] = []
        srv = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _down(self):
                srv.paths.append(self.path)
                body = b'{"error": "service unavailable"}'
                self.send_response(503)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_HEAD = do_POST = _down

        self._start(Handler)

    def asked_for(self, model_id: str) -> list[str]:
        """The requests about ``model_id`` (huggingface_hub 2.x also fetches its agent registry, once a day)."""
        return [p for p in self.paths if model_id in p]


def hub_env(monkeypatch, endpoint: str, hf_home) -> None:
    """Point huggingface_hub and medret at ``endpoint`` with an empty Hugging Face cache under ``hf_home`` and an
    empty medret cache (the default models folder) beside it."""
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("MEDRET_CACHE", str(Path(hf_home).parent / "medret-cache"))
    for var in ("HF_HUB_CACHE", "HF_HUB_OFFLINE", "MEDRET_MODELS_DIR", "HF_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    for var in ("NO_PROXY", "no_proxy"):  # the fake servers are on loopback, never behind a proxy
        monkeypatch.setenv(var, "127.0.0.1,localhost")


class RawServer:
    """A TCP server on 127.0.0.1 (a free port) for answers no HTTP library would send: each accepted connection goes
    to :meth:`answer` in a thread of its own until :meth:`close`, which sets ``stop`` (handlers waiting on it end).
    ``endpoint`` is ``http://127.0.0.1:PORT``; ``connections`` counts the connections accepted."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.connections = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        self.sock.settimeout(0.05)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            threading.Thread(target=self.answer, args=(conn,), daemon=True).start()

    def answer(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class SilentServer(RawServer):
    """Accepts every connection and never sends a byte: the host of a firewall or proxy that swallows requests."""

    def __init__(self):
        self.conns: list[socket.socket] = []
        super().__init__()

    def answer(self, conn: socket.socket) -> None:
        self.conns.append(conn)  # kept open, never read, never answered

    def close(self) -> None:
        super().close()
        for c in self.conns:
            c.close()


class EndlessServer(_Server):
    """Answers every GET with 200 and zeros until the client hangs up: with no Content-Length (``chunked=False``,
    the body ends when the connection closes) or in HTTP/1.1 chunks. HEAD gets the same headers. ``sent`` counts
    the body bytes written."""

    def __init__(self, chunked: bool = False, content_type: str = "application/octet-stream"):
        self.sent = 0
        self.requests = 0
        srv = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _head(self):
                srv.requests += 1
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                if chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                else:
                    self.send_header("Connection", "close")
                self.end_headers()

            def do_HEAD(self):
                self._head()
                self.close_connection = True

            def _endless(self):
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                self._head()
                block = b"0" * (1 << 16)
                try:
                    while True:
                        if chunked:
                            self.wfile.write(b"%x\r\n" % len(block) + block + b"\r\n")
                        else:
                            self.wfile.write(block)
                        srv.sent += len(block)
                except OSError:
                    pass
                self.close_connection = True

            do_GET = do_POST = _endless

        self._start(Handler)
