"""The ASGI app of ``medret serve``: Search-R1's ``POST /retrieve`` plus ``/health``, ``/`` and ``/stats``.

Plain Starlette (FastAPI's own base) with orjson bodies: requests are checked by :mod:`medret.validate`
(the same checks the in-process API runs), responses are ``orjson.dumps`` of the result — no per-document
model validation anywhere on the response path.

Wire contract (Search-R1 ``search_r1/search/retrieval_server.py``, veRL ``search_r1_like_utils.call_search_api``):

* request ``{"queries": [...], "topk": 3, "return_scores": true}``; ``topk`` missing or null → the server's
  default; ``return_scores`` missing → false (Search-R1's default); ``{"query": "..."}`` (one query, as SkyRL
  sends it) is answered like ``{"queries": ["..."]}``; unknown fields are ignored (as Search-R1's pydantic
  model ignores them) and logged once per name.
* response ``{"result": [[{"document": {...}, "score": s}, ...], ...]}``; with ``return_scores`` false the
  inner items are the documents; ``queries: []`` → ``{"result": []}``.
* bad input → 4xx ``{"error": "...", "field": "..."}``; 503 while the engine loads (clients retry on 503).
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import re
import threading
import time
from collections import deque
from typing import Any, Callable

import orjson
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from medret.config import RetrieverConfig
from medret.errors import QueryError
from medret.serve.batcher import Batcher, SearchBackend
from medret.serve.settings import ServeSettings, env_token
from medret.transports.base import without_scores
from medret.transports.local import LocalTransport
from medret.validate import (
    check_answer_size,
    check_flag,
    check_queries,
    check_topk,
)
from medret.version import __version__

log = logging.getLogger(__name__)

KNOWN_FIELDS = frozenset({"queries", "query", "topk", "return_scores"})
# serialize big answers off the event loop (a 2,560 x 5 answer is ~20 MB of JSON)
_OFFLOAD_DOCS = 2048
# distinct unknown field names remembered (and logged once each); beyond it they are only counted
IGNORED_NAMES_KEPT = 64




class BadRequest(Exception):
    def __init__(self, status: int, message: str, field: str | None):
        super().__init__(message)
        self.status, self.message, self.field = status, message, field


class Service:
    """Everything the routes share: config, settings, the batcher (engine owner) and the counters."""

    def __init__(self, config: RetrieverConfig, settings: ServeSettings,
                 loader: Callable[[], SearchBackend] | None = None):
        self.config = config
        self.settings = settings
        self.batcher = Batcher(loader or _local_loader(config), settings)
        self._token = settings.token.encode() if settings.token else None
        self.started_at = time.time()
        self.requests_ok = 0
        self.requests_rejected = 0
        self.requests_failed = 0
        self.latencies_ms: deque[float] = deque(maxlen=settings.latency_window)
        self._ignored_logged: set[str] = set()   # at most IGNORED_NAMES_KEPT names
        self.ignored_fields = 0                   # unknown fields seen in requests, counted, never stored
        self._ignored_overflow_logged = False
        self._started = False
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            if not self._started:
                self._started = True
                self.batcher.start()

    def authorized(self, request: Request) -> bool:
        if self._token is None:
            return True
        got = request.headers.get("authorization", "")
        scheme, _, value = got.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), self._token)

    def info(self) -> dict[str, Any]:
        b = self.batcher
        engine = b.info
        return {
            "service": "medret", "version": __version__, "status": b.status,
            "corpus": engine.get("corpus", self.config.corpus_name),
            "retriever": engine.get("retriever", self.config.retriever_name),
            "db_dir": self.config.db_dir, "n_docs": engine.get("n_docs"), "index": engine.get("index"),
            "device": engine.get("device"), "reranker": engine.get("reranker"),
            "rerank_depth": engine.get("rerank_depth"),
            "default_topk": self.settings.default_topk, "max_topk": self.config.max_topk,
            "max_batch": self.config.max_batch, "max_query_chars": self.config.max_query_chars,
            "max_answer_docs": self.config.max_answer_docs, "max_answer_bytes": self.config.max_answer_bytes,
            "max_batch_queries": self.settings.max_batch_queries, "max_batch_docs": self.settings.max_batch_docs,
            "max_wait_ms": self.settings.max_wait_ms, "max_body_bytes": self.settings.max_body_bytes,
            "header_timeout_s": self.settings.header_timeout_s, "body_timeout_s": self.settings.body_timeout_s,
            "keep_alive_s": self.settings.keep_alive_s, "auth": self._token is not None,
            "endpoints": ["POST /retrieve", "GET /health", "GET /", "GET /stats"],
        }

    def stats(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)
        b = self.batcher
        out = {
            "status": b.status, "corpus": b.info.get("corpus", self.config.corpus_name),
            "n_docs": b.info.get("n_docs"), "index": b.info.get("index"), "device": b.info.get("device"),
            "uptime_s": round(time.time() - self.started_at, 3),
            "load_s": None if b.load_seconds is None else round(b.load_seconds, 3),
            "requests_served": self.requests_ok, "requests_rejected": self.requests_rejected,
            "requests_failed": self.requests_failed, "ignored_fields": self.ignored_fields,
            "latency_ms": {"p50": _pct(lat, 50), "p95": _pct(lat, 95), "p99": _pct(lat, 99),
                           "window": len(lat)},
        }
        out.update(b.stats.as_dict())
        out["queued_requests"] = b.queued()
        return out

    def note_ignored(self, names: list[str]) -> None:
        """Count unknown fields; log each of the first ``IGNORED_NAMES_KEPT`` distinct names once. Memory stays
        bounded whatever clients send (a request with a million unique keys adds nothing kept)."""
        self.ignored_fields += len(names)
        room = IGNORED_NAMES_KEPT - len(self._ignored_logged)
        new: list[str] = []
        for n in names:
            if len(new) >= room:
                break
            key = n[:100]  # names are kept short
            if key not in self._ignored_logged:
                new.append(key)
                self._ignored_logged.add(key)
        if new:
            log.warning("ignoring unknown request field(s) %s: /retrieve reads queries (or query), topk and "
                        "return_scores", sorted(new)[:10])
        full = len(self._ignored_logged) >= IGNORED_NAMES_KEPT
        if full and not self._ignored_overflow_logged and any(n[:100] not in self._ignored_logged for n in names):
            self._ignored_overflow_logged = True
            log.warning("more than %d distinct unknown request field names: no longer logging them "
                        "(GET /stats counts every ignored field as ignored_fields)", IGNORED_NAMES_KEPT)


def _pct(sorted_values: list[float], p: float) -> float | None:
    if not sorted_values:
        return None
    # nearest-rank percentile
    i = max(0, min(len(sorted_values) - 1, int(-(-p * len(sorted_values) // 100)) - 1))
    return round(sorted_values[i], 3)


def _local_loader(config: RetrieverConfig) -> Callable[[], SearchBackend]:
    def load() -> SearchBackend:
        return LocalTransport(config.replace(backend="local"))

    return load


# ---- responses ---------------------------------------------------------------------------------------------
def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json", headers=headers)


def error_response(status: int, message: str, field: str | None = None,
                   headers: dict[str, str] | None = None) -> Response:
    return json_response({"error": message, "field": field}, status, headers)


_FIELD_RE = re.compile(r"^(\w+(?:\[\d+\])?)")


def _field_of(message: str, default: str) -> str:
    m = _FIELD_RE.match(message)
    return m.group(1) if m else default


def _unauthorized() -> Response:
    return error_response(401, "missing or wrong bearer token: send the header 'Authorization: Bearer <token>' "
                          "with the token the server was started with (--token or MEDRET_TOKEN)",
                          "authorization", {"WWW-Authenticate": "Bearer"})


# ---- request parsing ---------------------------------------------------------------------------------------
async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise BadRequest(400, f"content-length={declared!r} is not a number", "content-length") from None
        if size > limit:
            raise BadRequest(413, f"the request body has {size} bytes, more than the server's limit of {limit} "
                             f"(--max-body-bytes): send fewer or shorter queries per request", "body")
    chunks: list[bytes] = []
    n = 0
    async for chunk in request.stream():
        n += len(chunk)
        if n > limit:
            raise BadRequest(413, f"the request body is larger than the server's limit of {limit} bytes "
                             f"(--max-body-bytes): send fewer or shorter queries per request", "body")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_request(body: bytes, service: Service) -> tuple[list[str], int, bool]:
    """(queries, topk, return_scores) of a /retrieve body, or BadRequest naming the field."""
    if not body.strip():
        raise BadRequest(400, 'the request body is empty: send JSON such as {"queries": ["sepsis"], "topk": 3}',
                         "body")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise BadRequest(400, f"the request body is not valid JSON ({e}): send JSON such as "
                         f'{{"queries": ["sepsis"], "topk": 3}}', "body") from None
    if not isinstance(payload, dict):
        raise BadRequest(400, f"the request body is a JSON {type(payload).__name__}, not an object: send "
                         f'{{"queries": [...], "topk": 3, "return_scores": true}}', "body")
    unknown = [k for k in payload if k not in KNOWN_FIELDS]
    if unknown:
        service.note_ignored(unknown)
    config = service.config
    if "queries" in payload and "query" in payload:
        raise BadRequest(400, "send either queries (a list) or query (one string), not both", "query")
    if "queries" in payload:
        raw = payload["queries"]
        field = "queries"
    elif "query" in payload:
        q = payload["query"]
        if not isinstance(q, str):
            raise BadRequest(400, f"query={_short(q)} is a {type(q).__name__}: query must be one string "
                             f"(use queries for a list)", "query")
        raw = [q]
        field = "query"
    else:
        raise BadRequest(400, 'the request has no queries: send {"queries": ["..."]} (or {"query": "..."})',
                         "queries")
    try:
        queries = check_queries(raw, config.max_batch, config.max_query_chars)
    except QueryError as e:
        msg = str(e)
        if field == "query":
            msg = msg.replace("queries[0]", "query", 1)
        raise BadRequest(400, msg, _field_of(msg, field)) from None
    topk = payload.get("topk")
    if topk is None:
        topk = service.settings.default_topk
    elif isinstance(topk, float) and topk.is_integer():
        topk = int(topk)
    try:
        topk = check_topk(topk, config.max_topk, config.rerank_depth if config.reranker is not None else None)
        return_scores = check_flag("return_scores", payload.get("return_scores", False))
    except QueryError as e:
        raise BadRequest(400, str(e), _field_of(str(e), "topk")) from None
    if queries:
        info = service.batcher.info  # the engine's corpus size and mean document size, once it is loaded
        try:
            check_answer_size(len(queries), topk, config.max_answer_docs, config.max_answer_bytes,
                              info.get("doc_bytes"), info.get("n_docs"))
        except QueryError as e:
            raise BadRequest(413, str(e), field) from None
    return queries, topk, return_scores


def _short(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 80 else s[:80] + "…"


# ---- routes ------------------------------------------------------------------------------------------------
def _service(request: Request) -> Service:
    return request.app.state.service


async def retrieve(request: Request) -> Response:
    t0 = time.perf_counter()
    svc = _service(request)
    if not svc.authorized(request):
        svc.requests_rejected += 1
        return _unauthorized()
    try:
        body = await asyncio.wait_for(read_body(request, svc.settings.max_body_bytes), svc.settings.body_timeout_s)
        queries, topk, return_scores = parse_request(body, svc)
    except BadRequest as e:
        svc.requests_rejected += 1
        return error_response(e.status, e.message, e.field)
    except ClientDisconnect:
        return Response(status_code=499)
    except asyncio.TimeoutError:
        svc.requests_rejected += 1
        return error_response(408, f"the request body did not arrive whole within {svc.settings.body_timeout_s:g} s "
                              "(the server's --body-timeout): send the body at once, or raise --body-timeout",
                              "body", {"Connection": "close"})
    status = svc.batcher.status
    if status != "ready":
        svc.requests_rejected += 1
        if status == "loading":
            return error_response(503, "the retriever is still loading its index: retry shortly "
                                  "(GET /health answers 200 once it is ready)", None, {"Retry-After": "1"})
        return error_response(503, f"the retriever is not available ({status}): {svc.batcher.error}", None)
    if not queries:
        svc.requests_ok += 1
        svc.latencies_ms.append((time.perf_counter() - t0) * 1000)
        return json_response({"result": []})
    try:
        hits = await svc.batcher.submit(queries, topk)
    except Exception as e:  # noqa: BLE001 - the search failed; the server keeps serving
        svc.requests_failed += 1
        log.error("search failed: %s", e)
        return error_response(500, f"the search failed: {type(e).__name__}: {e}", None)
    if len(queries) * topk > _OFFLOAD_DOCS:
        content = await run_in_threadpool(_render, hits, return_scores)
    else:
        content = _render(hits, return_scores)
    svc.requests_ok += 1
    svc.latencies_ms.append((time.perf_counter() - t0) * 1000)
    return Response(content, media_type="application/json")


def _render(hits: list[list[Any]], return_scores: bool) -> bytes:
    return orjson.dumps({"result": without_scores(hits, drop=not return_scores)})


async def health(request: Request) -> Response:
    b = _service(request).batcher
    if b.status == "ready":  # with a rerank stage, the cross-encoder and its depth: part of what is served
        extra = {k: b.info[k] for k in ("reranker", "rerank_depth") if b.info.get(k) is not None}
        return json_response({"status": "ok", **extra})
    body: dict[str, Any] = {"status": b.status}
    if b.error is not None:
        body["error"] = f"{type(b.error).__name__}: {b.error}"
    return json_response(body, 503, {"Retry-After": "1"} if b.status == "loading" else None)


async def root(request: Request) -> Response:
    svc = _service(request)
    if not svc.authorized(request):
        return _unauthorized()
    return json_response(svc.info())


async def stats(request: Request) -> Response:
    svc = _service(request)
    if not svc.authorized(request):
        return _unauthorized()
    return json_response(svc.stats())


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    hint = {404: "unknown path: the routes are POST /retrieve, GET /health, GET / and GET /stats",
            405: f"method {request.method} is not allowed on {request.url.path}"}.get(exc.status_code, exc.detail)
    return error_response(exc.status_code, hint, None, getattr(exc, "headers", None))


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, f"internal error: {type(exc).__name__}", None)


def create_app(config: RetrieverConfig, settings: ServeSettings | None = None,
               loader: Callable[[], SearchBackend] | None = None) -> Starlette:
    """The ASGI app. The engine is loaded on its owner thread when the app starts (``/health`` is 503 until
    then); ``loader`` replaces how it is built (default: ``LocalTransport(config)``).

    ``settings.token`` defaults to the ``MEDRET_TOKEN`` environment variable when not given.
    """
    if settings is None:
        settings = ServeSettings(token=env_token())
    service = Service(config, settings, loader)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        service.start()
        try:
            yield
        finally:
            await _close(service)

    app = Starlette(
        routes=[Route("/retrieve", retrieve, methods=["POST"]), Route("/health", health, methods=["GET"]),
                Route("/", root, methods=["GET"]), Route("/stats", stats, methods=["GET"])],
        exception_handlers={HTTPException: _http_error, Exception: _internal_error},
        lifespan=lifespan,
    )
    app.state.service = service
    return app


async def _close(service: Service) -> None:
    await run_in_threadpool(service.batcher.close)
