"""Micro-batching: one thread owns the engine; concurrent requests are merged into one search call.

The owner thread loads the engine (so the whole life of the engine, from construction to close, is on one
thread: GPU faiss and CUDA streams are not safe to share), then loops: take the oldest request, take every
request already queued behind it (and, with ``max_wait_ms`` > 0, wait that long for more) up to
``max_batch_queries`` queries and ``max_batch_docs`` hits (queries x k), remove repeated queries across the
requests, run **one** search per distinct ``k`` and hand each request its rows. Futures are resolved on the
event loop with ``call_soon_threadsafe``; the event loop itself never runs search work.

With ``max_wait_ms`` = 0 (the default) batching is greedy: nothing waits on purpose, and requests that arrive
while the engine is busy are merged into the next call — so batch size grows with load and a lone request
pays no extra latency.

An *oversize* request (more than ``max_batch_docs`` hits) is never merged with others: it is searched alone, in
slices of at most ``max_batch_docs`` hits, and after each slice the requests queued meanwhile are served, so
small requests wait for at most one slice of a huge one, never for all of it. (As with merged batches, a dense
retriever's scores can then differ in the last float bits from one in-process call of the whole request.)
"""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from medret.errors import MedretError
from medret.options import Options, option
from medret.validate import check_number, check_whole, dedupe

log = logging.getLogger(__name__)


class SearchBackend(Protocol):
    """What the owner thread drives: a transport (normally :class:`medret.transports.local.LocalTransport`)."""

    def search(self, queries: list[str], k: int) -> list[list[Any]]: ...

    def info(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


@dataclass
class _Job:
    queries: list[str]
    k: int
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop


@dataclass
class _Oversize:
    """A request searched alone, slice by slice: its distinct queries, where each input goes, hits so far."""

    job: _Job
    unique: list[str]
    where: list[int]
    hits: list[list[Any]] = field(default_factory=list)


@dataclass
class BatchStats:
    batches: int = 0            # engine search calls
    queries_in: int = 0         # queries received (before dedupe)
    queries_searched: int = 0   # queries sent to the engine (after dedupe across requests)
    requests_merged: int = 0    # requests answered from batches
    max_batch_seen: int = 0
    search_seconds: float = 0.0
    errors: int = 0
    oversize_requests: int = 0  # requests searched alone in slices (more than max_batch_docs hits)

    def as_dict(self) -> dict[str, Any]:
        return {"batches_run": self.batches, "queries_received": self.queries_in,
                "queries_searched": self.queries_searched, "requests_batched": self.requests_merged,
                "largest_batch": self.max_batch_seen, "search_seconds": round(self.search_seconds, 6),
                "engine_errors": self.errors, "oversize_requests": self.oversize_requests}


_STOP = object()


SERVER = "server"  # the flag group of medret serve's own settings


@dataclass(frozen=True)
class BatchOptions(Options):
    """The micro-batcher's settings, declared once: ``medret serve``'s (:class:`medret.serve.settings.
    ServeSettings`) and the veRL tool's (:class:`medret.integrations.verl_tool.ToolOptions`) are these."""

    max_batch_queries: int = option(4096, "most queries merged from concurrent requests into one engine call",
                                    check=check_whole, metavar="N", group=SERVER)
    max_batch_docs: int = option(65536, "most hits (queries x topk) one engine call computes; a larger request is "
                                 "searched alone, in slices of this size, with other requests served between its "
                                 "slices", check=check_whole, metavar="N", group=SERVER)
    max_wait_ms: float = option(0.0, "milliseconds to wait for more requests before a batch (0: take what is "
                                "queued)", check=check_number.at_least(0).at_most(10_000), metavar="X", group=SERVER)


class Batcher:
    """Owns the engine on one thread; :meth:`submit` from the event loop, await the answer.

    ``options``: its settings (any :class:`BatchOptions`, e.g. the server's); keyword arguments change some."""

    def __init__(self, loader: Callable[[], SearchBackend], options: BatchOptions | None = None,
                 name: str = "medret-engine", **changes: Any):
        opts = BatchOptions.of(options) if options is not None else BatchOptions()
        opts = opts.replace(**changes) if changes else opts
        self.max_batch_docs = opts.max_batch_docs
        self._loader = loader
        self.max_batch_queries = opts.max_batch_queries
        self.max_wait_s = opts.max_wait_ms / 1000.0
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.backend: SearchBackend | None = None
        self.status = "loading"  # loading -> ready | failed ; closed
        self.error: BaseException | None = None
        self.ready = threading.Event()   # set when loaded or failed
        self.stats = BatchStats()
        self.info: dict[str, Any] = {}
        self.load_seconds: float | None = None
        self._on_ready: list[Callable[[], None]] = []

    # ---- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def add_ready_callback(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` (on the owner thread) once the engine is loaded or failed to load."""
        self._on_ready.append(fn)
        if self.ready.is_set():
            fn()

    def close(self, timeout: float = 30.0) -> None:
        """Finish queued work, stop the owner thread, close the engine (on the owner thread)."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout)

    def queued(self) -> int:
        """Requests waiting in the queue (not yet taken by the owner thread)."""
        return self._queue.qsize()

    # ---- event loop side -------------------------------------------------------------------------------
    async def submit(self, queries: list[str], k: int) -> list[list[Any]]:
        """The hits of each query (validated, non-empty list), computed on the owner thread."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._queue.put(_Job(queries, k, fut, loop))
        return await fut

    # ---- owner thread ----------------------------------------------------------------------------------
    def _run(self) -> None:
        t0 = time.perf_counter()
        try:
            self.backend = self._loader()
            self.info = dict(self.backend.info())
            self.load_seconds = time.perf_counter() - t0
            self.status = "ready"
            log.info("engine loaded in %.2fs: %s", self.load_seconds, self.info)
        except BaseException as e:
            self.error = e
            self.status = "failed"
            log.error("loading the engine failed: %s", e, exc_info=not _is_medret_error(e))
        self.ready.set()
        for fn in self._on_ready:
            try:
                fn()
            except Exception:
                log.exception("ready callback failed")
        if self.status != "ready":
            self._drain_failed()
            return
        try:
            self._loop()
        finally:
            self.status = "closed"
            try:
                self._backend().close()
            except Exception:
                log.exception("closing the engine failed")

    def _backend(self) -> SearchBackend:
        if self.backend is None:  # only the owner thread calls this, after the engine loaded
            raise RuntimeError("the engine is not loaded")
        return self.backend

    def _drain_failed(self) -> None:
        while True:
            job = self._queue.get()
            if job is _STOP:
                return
            _resolve(job, None, RuntimeError(f"the engine failed to load: {self.error}"))

    def _loop(self) -> None:
        pending: deque[_Job] = deque()       # taken from the queue, not yet searched, oldest first
        oversize: deque[_Oversize] = deque()  # searched a slice at a time, the oldest first
        stopping = False
        while True:
            idle = not pending and not oversize
            if idle and stopping:
                return
            stopping = self._take(pending, oversize, block=idle) or stopping
            if pending:
                jobs = self._next_batch(pending)
                if self.max_wait_s > 0 and not stopping:
                    stopping = self._wait_for_more(jobs, pending, oversize)
                self._run_jobs(jobs)
            if oversize:
                if self._run_slice(oversize[0]):
                    oversize.popleft()

    def _is_oversize(self, job: _Job) -> bool:
        return len(job.queries) * job.k > self.max_batch_docs

    def _file(self, item: Any, pending: deque, oversize: deque) -> bool:
        """Put a queue item where it belongs; True for the stop marker."""
        if item is _STOP:
            return True
        if self._is_oversize(item):
            unique, where = dedupe(item.queries)
            oversize.append(_Oversize(item, unique, where))
            self.stats.oversize_requests += 1
        else:
            pending.append(item)
        return False

    def _take(self, pending: deque, oversize: deque, block: bool) -> bool:
        """Move every queued request into ``pending`` / ``oversize`` (waiting for one if ``block``)."""
        stop = False
        if block:
            stop = self._file(self._queue.get(), pending, oversize)
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return stop
            stop = self._file(item, pending, oversize) or stop

    def _fits(self, jobs: list[_Job], job: _Job) -> bool:
        n = sum(len(j.queries) for j in jobs) + len(job.queries)
        docs = sum(len(j.queries) * j.k for j in jobs) + len(job.queries) * job.k
        return n <= self.max_batch_queries and docs <= self.max_batch_docs

    def _next_batch(self, pending: deque) -> list[_Job]:
        """The oldest pending request and those after it that fit (in order: a request is never split)."""
        jobs = [pending.popleft()]
        while pending and self._fits(jobs, pending[0]):
            jobs.append(pending.popleft())
        return jobs

    def _wait_for_more(self, jobs: list[_Job], pending: deque, oversize: deque) -> bool:
        """``max_wait_ms``: wait that long for requests that still fit this batch; True if a stop arrived."""
        deadline = time.monotonic() + self.max_wait_s
        while not pending:  # a request that did not fit is waiting: the batch is as full as it gets
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                item = self._queue.get(timeout=remaining)
            except queue.Empty:
                return False
            if self._file(item, pending, oversize):
                return True
            while pending and self._fits(jobs, pending[0]):
                jobs.append(pending.popleft())
        return False

    def _run_slice(self, big: _Oversize) -> bool:
        """Search the next slice of an oversize request; True when it is answered (or failed)."""
        k = big.job.k
        size = max(1, self.max_batch_docs // k)
        start = len(big.hits)
        part = big.unique[start:start + size]
        t0 = time.perf_counter()
        try:
            hits = self._backend().search(part, k)
        except Exception as e:
            self.stats.errors += 1
            log.exception("search of a slice of %d queries (of an oversize request) failed", len(part))
            _resolve(big.job, None, e)
            return True
        s = self.stats
        s.batches += 1
        s.queries_searched += len(part)
        s.max_batch_seen = max(s.max_batch_seen, len(part))
        s.search_seconds += time.perf_counter() - t0
        big.hits.extend(hits)
        if len(big.hits) < len(big.unique):
            return False
        s.queries_in += len(big.job.queries)
        s.requests_merged += 1
        _resolve(big.job, [big.hits[i] for i in big.where], None)
        big.hits = []
        return True

    def _run_jobs(self, jobs: list[_Job]) -> None:
        by_k: dict[int, list[_Job]] = {}
        for job in jobs:
            by_k.setdefault(job.k, []).append(job)
        for k, group in by_k.items():
            merged = [q for job in group for q in job.queries]
            unique, where = dedupe(merged)
            t0 = time.perf_counter()
            try:
                hits = self._backend().search(unique, k)
            except Exception as e:
                self.stats.errors += 1
                log.exception("search of a batch of %d queries failed", len(unique))
                for job in group:
                    _resolve(job, None, e)
                continue
            dt = time.perf_counter() - t0
            s = self.stats
            s.batches += 1
            s.queries_in += len(merged)
            s.queries_searched += len(unique)
            s.requests_merged += len(group)
            s.max_batch_seen = max(s.max_batch_seen, len(unique))
            s.search_seconds += dt
            pos = 0
            for job in group:
                m = len(job.queries)
                _resolve(job, [hits[i] for i in where[pos:pos + m]], None)
                pos += m


def _resolve(job: _Job, value: Any, error: BaseException | None) -> None:
    def done() -> None:
        if job.future.done():  # the client went away (request cancelled)
            return
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(value)

    try:
        job.loop.call_soon_threadsafe(done)
    except RuntimeError:  # the loop is closed: nobody is waiting any more
        pass


def _is_medret_error(e: BaseException) -> bool:
    return isinstance(e, MedretError)
