"""HTTP transport: search through a running ``medret serve`` (or any Search-R1-compatible /retrieve server).

One persistent ``http.client`` connection (keep-alive; the standard library's client reads a 1.3 MB answer
~7 ms faster than ``requests`` at batch 512). Each search is one ``POST /retrieve`` with
``return_scores: true``; the answer's documents are kept exactly as the server sent them. Connection errors,
timeouts and 5xx answers are retried with exponential backoff (``config.retries`` times); 4xx answers are not
(the request itself is wrong) and raise :class:`medret.errors.QueryError` with the server's message. After the
last try a :class:`medret.errors.TransportError` names the URL, the number of attempts and the last cause.
Its options are an :class:`medret.config.HttpOptions` (url, address file, token, deadlines, retries).

It is medret's one HTTP client: Search-R1's HTTP path (:func:`medret.integrations.searchr1_runtime.
http_batch_search`, one POST to the exact URL, no retries) and ``medret doctor``'s health check use
:meth:`HttpTransport.send_once`.

Deadlines: ``config.timeout`` bounds each attempt as a whole — connecting, sending and reading the entire
answer — not each socket read (a server trickling one byte a second never holds a client past it); and
``config.total_timeout`` (optional) bounds all attempts and the waits between them together.

Size: an answer larger than ``config.max_answer_bytes`` (the server's own limit, :class:`medret.config.
AnswerLimit`) is refused as soon as its ``Content-Length`` says so, or, chunked or unannounced, when that many
bytes have arrived: :class:`AnswerTooLarge`, not retried. The client never holds more than the cap.

``url`` may be ``http://host:port`` or ``http://host:port/retrieve`` (or ``host:port``). With
``address_file`` the address is read from the file ``medret serve --address-file`` writes (``host:port``, or
JSON ``{"url": ...}`` / ``{"host": ..., "port": ...}``; waiting up to ``timeout`` seconds for it to appear), and
read again after a connection error, so a restarted server on a new port is found.
"""
from __future__ import annotations

import functools
import http.client
import io
import logging
import math
import socket
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from medret.config import HttpOptions
from medret.errors import QueryError, TransportError
from medret.transports.base import BaseTransport
from medret.validate import check_token

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({500, 502, 503, 504})


def base_url(url: str) -> str:
    """'host:port', 'http://host:port/', 'http://host:port/retrieve' → 'http://host:port'."""
    u = url.strip()
    if "://" not in u:
        u = "http://" + u
    u = u.rstrip("/")
    if u.endswith("/retrieve"):
        u = u[: -len("/retrieve")]
    return u.rstrip("/")


class DeadlineExceeded(socket.timeout):
    """An HTTP exchange did not complete by its deadline (a ``socket.timeout``, so an ``OSError``)."""


class _DeadlineSocket:
    """What http.client's response reads from: each read waits at most until the deadline, so the whole answer
    (head and body) is bounded, however slowly the server sends it."""

    def __init__(self, sock: socket.socket, deadline: float):
        self._sock = sock
        self._deadline = deadline

    def makefile(self, mode: str = "rb", *args: Any, **kwargs: Any) -> io.BufferedReader:
        # as socket.makefile does: the file holds a reference, so the connection closing its socket (an answer
        # with "Connection: close") leaves the descriptor open until the answer has been read
        self._sock._io_refs += 1  # type: ignore[attr-defined]
        return io.BufferedReader(socket.SocketIO(self, "rb"))  # type: ignore[arg-type]

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceeded("deadline reached while reading the answer")
        self._sock.settimeout(remaining)
        return self._sock.recv_into(buffer, nbytes, flags)

    def _decref_socketios(self) -> None:  # SocketIO.close calls it
        self._sock._decref_socketios()  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class _DeadlineResponse(http.client.HTTPResponse):
    def __init__(self, sock: socket.socket, *args: Any, deadline: float = math.inf, **kwargs: Any):
        super().__init__(_DeadlineSocket(sock, deadline), *args, **kwargs)  # type: ignore[arg-type]


class AnswerTooLarge(TransportError):
    """An answer larger than ``max_answer_bytes`` (announced, or as it arrived): not retried."""


_READ_BLOCK = 1 << 20


def read_capped(r: http.client.HTTPResponse, max_bytes: int | None, where: str) -> bytes:
    """The whole body of ``r``, refused with :class:`AnswerTooLarge` as soon as it is announced (Content-Length) or
    found (chunked, or no length: read in blocks) to be larger than ``max_bytes``: memory stays within the cap."""
    if max_bytes is None:
        return r.read()
    length = r.getheader("Content-Length")
    if length is not None and length.strip().isdigit() and int(length) > max_bytes:
        raise AnswerTooLarge(f"{where} announced an answer of {int(length):,} bytes (Content-Length), more than "
                             f"max_answer_bytes={max_bytes}: send fewer queries per request or a smaller topk, or "
                             "raise max_answer_bytes (the same setting as the server's --max-answer-bytes)")
    out = bytearray()
    while True:
        block = r.read(min(_READ_BLOCK, max_bytes + 1 - len(out)))
        if not block:
            return bytes(out)
        out += block
        if len(out) > max_bytes:
            raise AnswerTooLarge(f"{where} sent an answer larger than max_answer_bytes={max_bytes} bytes (stopped "
                                 "reading there): send fewer queries per request or a smaller topk, or raise "
                                 "max_answer_bytes (the same setting as the server's --max-answer-bytes)")


def exchange(conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None,
             headers: dict[str, str], deadline: float, max_bytes: int | None = None) -> "_Response":
    """One request on ``conn`` that completes (connect, send, the whole answer) by ``deadline`` (a
    ``time.monotonic()`` value) or raises :class:`DeadlineExceeded`; an answer over ``max_bytes`` raises
    :class:`AnswerTooLarge`. The connection is closed on any failure."""
    try:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceeded("deadline reached before the request was sent")
        conn.timeout = remaining  # connect(), if it is not connected yet
        if conn.sock is not None:
            conn.sock.settimeout(remaining)  # sendall: a total limit for the whole send
        conn.response_class = functools.partial(_DeadlineResponse, deadline=deadline)  # type: ignore[assignment]
        conn.request(method, path, body=body, headers=headers)
        r = conn.getresponse()
        return _Response(r.status, read_capped(r, max_bytes, f"{method} {conn.host}:{conn.port}{path}"))
    except BaseException:
        conn.close()  # a half-used connection is never reused
        raise


def connection_for(base: str, timeout: float) -> http.client.HTTPConnection:
    parts = urlsplit(base if "://" in base else "http://" + base)
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    return cls(parts.hostname or "", parts.port, timeout=timeout)


def read_address_file(path: str | Path) -> str | None:
    """The server address an address file holds, as a base URL (``http://host:port``); None when the file is
    missing or empty. ``OSError`` when it cannot be read. ``medret serve --address-file`` writes ``host:port``;
    ``{"url": ...}`` and ``{"host": ..., "port": ...}`` (JSON) are read too."""
    try:
        text = Path(path).expanduser().read_text().strip()
    except FileNotFoundError:
        return None
    if text.startswith("{"):
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError:
            data = None
        if isinstance(data, dict):
            text = str(data.get("url") or (f"{data['host']}:{data['port']}" if "host" in data else ""))
    text = text.splitlines()[0].strip() if text else ""
    return base_url(text) if text else None


def is_timeout(e: BaseException) -> bool:
    return isinstance(e, (socket.timeout, TimeoutError))


class HttpTransport(BaseTransport):
    """Search through a server: ``HttpTransport(HttpOptions(url=..., retries=3))``."""

    backend = "http"
    remote = True        # the server holds the corpus, the index and the models
    backoff_base = 0.1   # seconds before the first retry; doubles each time
    backoff_max = 5.0
    address_poll = 0.05

    def __init__(self, options: HttpOptions):
        config = self.config = options
        self._conn: http.client.HTTPConnection | None = None
        self._conn_base: str | None = None
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if config.token is not None:
            # printable ASCII only, refused here at once (not as a UnicodeEncodeError on the first search)
            self._headers["Authorization"] = f"Bearer {check_token(config.token, 'token')}"
        self._base: str | None = base_url(config.url) if config.url else None
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, config: Any) -> "HttpTransport":
        return cls(HttpOptions.of(config))

    @classmethod
    def where(cls, config: Any) -> str:
        return str(config.url or f"the address in {config.address_file}")

    # ---- address --------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The /retrieve URL now in use (reads the address file if needed)."""
        return self._resolve() + "/retrieve"

    def _resolve(self, reread: bool = False) -> str:
        if self.config.address_file and (self._base is None or reread):
            self._base = self._read_address_file(wait=self._base is None)
        if self._base is None:
            raise TransportError("no server address: give url='http://host:port' or address_file=PATH")
        return self._base

    def _read_address_file(self, wait: bool) -> str | None:
        path = Path(str(self.config.address_file)).expanduser()
        deadline = time.monotonic() + (self.config.timeout if wait else 0)
        while True:
            try:
                found = read_address_file(path)
                if found:
                    return found
            except OSError as e:
                raise TransportError(f"cannot read the address file {str(path)!r}: {e}") from None
            if time.monotonic() >= deadline:
                if not wait:
                    return self._base
                raise TransportError(
                    f"the address file {str(path)!r} did not appear within {self.config.timeout:g}s: start the "
                    f"server with `medret serve --address-file {path}` (it writes the file once the index is "
                    f"loaded), or raise timeout")
            time.sleep(self.address_poll)

    # ---- requests -------------------------------------------------------------------------------------
    def _send(self, base: str, method: str, path: str, body: bytes | None, deadline: float) -> "_Response":
        """One request on the kept-alive connection to ``base`` (reconnecting when the base changed), complete
        by ``deadline`` (``time.monotonic()``)."""
        if self._conn is None or self._conn_base != base:
            self.close()
            self._conn = connection_for(base, max(0.001, deadline - time.monotonic()))
            self._conn_base = base
        prefix = urlsplit(base).path.rstrip("/")
        try:
            return exchange(self._conn, method, prefix + path, body, self._headers, deadline,
                            self.config.max_answer_bytes)
        except BaseException:
            self._conn = None  # exchange closed it
            raise

    def _request(self, method: str, path: str, body: bytes | None = None) -> Any:
        cfg = self.config
        attempts = 1 + cfg.retries
        start = time.monotonic()
        overall = start + cfg.total_timeout if cfg.total_timeout else math.inf
        last: str = ""
        url = ""
        done = 0
        for attempt in range(1, attempts + 1):
            base = self._resolve(reread=attempt > 1)
            url = base + path
            deadline = min(time.monotonic() + cfg.timeout, overall)
            done = attempt
            try:
                resp = self._send(base, method, path, body, deadline)
            except (OSError, http.client.HTTPException) as e:
                if is_timeout(e):
                    cap = (f"total_timeout={cfg.total_timeout:g}s" if deadline >= overall
                           else f"timeout={cfg.timeout:g}s")
                    last = f"Timeout: no complete answer within {cap} ({type(e).__name__}: {e})"
                else:
                    last = f"ConnectionError: {type(e).__name__}: {e}"
            else:
                if resp.status_code == 200:
                    try:
                        return orjson.loads(resp.content)
                    except orjson.JSONDecodeError as e:
                        raise TransportError(f"{url} answered 200 with a body that is not JSON ({e}): is it a "
                                             f"medret / Search-R1 retrieval server?") from None
                if resp.status_code in RETRY_STATUS:
                    last = f"HTTP {resp.status_code}: {_error_text(resp)}"
                elif resp.status_code == 401:
                    raise TransportError(f"{url} refused the request (HTTP 401): pass token=... (the server's "
                                         f"--token-file or MEDRET_TOKEN)")
                elif 400 <= resp.status_code < 500:
                    raise QueryError(f"{url} rejected the request (HTTP {resp.status_code}): {_error_text(resp)}")
                else:
                    raise TransportError(f"{url} answered HTTP {resp.status_code}: {_error_text(resp)}")
            if attempt < attempts:
                delay = min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1))
                if time.monotonic() + delay >= overall:
                    break  # no time left for another attempt
                log.warning("medret http: %s %s failed (%s), attempt %d/%d; retrying in %.2fs", method, url, last,
                            attempt, attempts, delay)
                time.sleep(delay)
        gave_up = (f" (stopped retrying: total_timeout={cfg.total_timeout:g}s reached)"
                   if done < attempts else "")
        raise TransportError(f"{method} {url} failed after {done} attempt(s){gave_up}; last error: {last}")

    def retrieve(self, queries: list[str], k: int, return_scores: bool) -> dict:
        """The server's /retrieve JSON as it sent it, checked for shape (one list per query, at most k items,
        each a scored item ``{"document": {...}, "score": s}`` or, without scores, a document)."""
        body = orjson.dumps({"queries": queries, "topk": k, "return_scores": return_scores})
        with self._lock:
            data = self._request("POST", "/retrieve", body)
        problem = answer_shape_problem(data, len(queries), k, return_scores)
        if problem:
            raise self._shape_error(problem)
        return data

    def search(self, queries: list[str], k: int) -> list[list[dict]]:
        return self.retrieve(queries, k, True)["result"]

    def _shape_error(self, problem: str) -> TransportError:
        return TransportError(f"{self._base}/retrieve answered in an unexpected shape ({problem}): expected "
                              f'{{"result": [[{{"document": {{...}}, "score": s}}, ...], ...]}}')

    def info(self) -> dict[str, Any]:
        with self._lock:
            return self._request("GET", "/")

    def send_once(self, method: str, path: str | None, body: bytes | None = None,
                  headers: dict[str, str] | None = None) -> "_Response":
        """One request on a new connection, answered whole within ``timeout`` seconds (no retries): to ``path``
        on the server's address, or with ``path=None`` to the URL exactly as given (Search-R1 posts to its
        ``retriever.url`` as it is). Raises ``OSError`` (connection errors; :class:`DeadlineExceeded`, a
        ``socket.timeout``, when the deadline passes) or ``http.client.HTTPException``."""
        if path is None:
            if not self.config.url:
                raise TransportError("send_once(path=None) needs url=")
            target = self.config.url if "://" in self.config.url else "http://" + self.config.url
        else:
            target = self._resolve() + path
        parts = urlsplit(target)
        conn = connection_for(f"{parts.scheme}://{parts.netloc}", self.config.timeout)
        full = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        try:
            return exchange(conn, method, full, body, {**self._headers, **(headers or {})},
                            time.monotonic() + self.config.timeout, self.config.max_answer_bytes)
        finally:
            conn.close()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def answer_shape_problem(data: Any, n_queries: int, k: int, return_scores: bool) -> str | None:
    """What is wrong with a /retrieve answer's shape, or None: ``{"result": [row per query]}``, each row a list of
    at most ``k`` items; with scores each item ``{"document": {... "contents": str ...}, "score": number}``,
    without scores each item the document itself."""
    if not isinstance(data, dict) or not isinstance(data.get("result"), list):
        return "no 'result' list"
    rows = data["result"]
    if len(rows) != n_queries:
        return f"{len(rows)} result lists for {n_queries} queries"
    for i, row in enumerate(rows):
        if not isinstance(row, list):
            return f"result[{i}] is a {type(row).__name__}, not a list"
        if len(row) > k:
            return f"result[{i}] has {len(row)} items for topk {k}"
        for j, item in enumerate(row):
            if not isinstance(item, dict):
                return f"result[{i}][{j}] is a {type(item).__name__}, not an object"
            doc = item.get("document") if return_scores else item
            if return_scores:
                score = item.get("score")
                if isinstance(score, bool) or not isinstance(score, (int, float)):
                    return f"result[{i}][{j}] has no numeric 'score'"
            if not isinstance(doc, dict) or not isinstance(doc.get("contents"), str):
                where = f"result[{i}][{j}]" + (".document" if return_scores else "")
                return f"{where} is not a document with a 'contents' string"
    return None


class _Response:
    __slots__ = ("status_code", "content")

    def __init__(self, status_code: int, content: bytes):
        self.status_code = status_code
        self.content = content

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")


def _error_text(resp: Any) -> str:
    try:
        data = orjson.loads(resp.content)
        if isinstance(data, dict) and "error" in data:
            field = data.get("field")
            return str(data["error"]) + (f" (field: {field})" if field else "")
    except orjson.JSONDecodeError:
        pass
    text = resp.text.strip()
    return text[:300] if text else "(empty body)"
