"""The batcher merges queued requests into one engine call, dedupes across them, groups by topk, never splits."""
from __future__ import annotations

import asyncio
import threading

import pytest

from medret.serve.batcher import Batcher


class Recorder:
    """A backend whose answer for query q is [(q, k)]; it records every call and can hold the first one."""

    def __init__(self, hold_first: bool = True):
        self.calls: list[tuple[list[str], int, str]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.hold = hold_first

    def search(self, queries, k):
        self.calls.append((list(queries), k, threading.current_thread().name))
        if self.hold:
            self.hold = False
            self.entered.set()
            assert self.release.wait(10)
        if "fail" in queries:
            raise RuntimeError("bad batch")
        return [[(q, k)] for q in queries]

    def info(self):
        return {"corpus": "rec"}

    def close(self):
        pass


def run(coro):
    return asyncio.run(coro)


def test_queued_requests_are_merged_deduped_and_grouped_by_k():
    backend = Recorder()
    b = Batcher(lambda: backend, max_batch_queries=100)
    b.start()

    async def main():
        first = asyncio.ensure_future(b.submit(["a"], 3))
        while not backend.entered.is_set():  # the engine is busy with the first request
            await asyncio.sleep(0.001)
        queued = [asyncio.ensure_future(b.submit(qs, k)) for qs, k in
                  [(["b", "c"], 3), (["c", "d", "b"], 3), (["e"], 5), (["b"], 5)]]
        await asyncio.sleep(0.05)  # all four are queued behind the busy engine
        backend.release.set()
        return await first, await asyncio.gather(*queued)

    first, rest = run(main())
    b.close()
    assert first == [[("a", 3)]]
    assert rest == [[[("b", 3)], [("c", 3)]], [[("c", 3)], [("d", 3)], [("b", 3)]], [[("e", 5)]], [[("b", 5)]]]
    # call 1: the first request alone; then one call per topk group of the merged batch, repeats removed
    assert [(q, k) for q, k, _ in backend.calls] == [(["a"], 3), (["b", "c", "d"], 3), (["e", "b"], 5)]
    assert {name for _, _, name in backend.calls} == {"medret-engine"}
    s = b.stats.as_dict()
    assert (s["batches_run"], s["queries_received"], s["queries_searched"], s["requests_batched"]) == (3, 8, 6, 5)


def test_max_batch_queries_is_never_exceeded_and_requests_are_never_split():
    backend = Recorder()
    b = Batcher(lambda: backend, max_batch_queries=4)
    b.start()

    async def main():
        first = asyncio.ensure_future(b.submit(["x"], 1))
        while not backend.entered.is_set():
            await asyncio.sleep(0.001)
        sizes = [3, 2, 6, 1]  # 6 > 4: runs alone, unsplit
        futs = [asyncio.ensure_future(b.submit([f"q{i}_{j}" for j in range(n)], 1)) for i, n in enumerate(sizes)]
        await asyncio.sleep(0.05)
        backend.release.set()
        await first
        return await asyncio.gather(*futs)

    answers = run(main())
    b.close()
    assert [len(a) for a in answers] == [3, 2, 6, 1]
    assert [len(q) for q, _, _ in backend.calls] == [1, 3, 2, 6, 1]  # 3+2 > 4 → two calls; the 6 alone; then 1


def test_a_failing_batch_fails_only_its_requests():
    backend = Recorder(hold_first=False)
    b = Batcher(lambda: backend)
    b.start()

    async def main():
        with pytest.raises(RuntimeError, match="bad batch"):
            await b.submit(["fail"], 2)
        return await b.submit(["ok"], 2)

    assert run(main()) == [[("ok", 2)]]
    b.close()
    assert b.stats.errors == 1 and b.stats.batches == 1


def test_max_wait_ms_collects_requests_that_arrive_within_the_window():
    backend = Recorder(hold_first=False)
    b = Batcher(lambda: backend, max_wait_ms=300)
    b.start()
    assert b.ready.wait(10)

    async def main():
        f1 = asyncio.ensure_future(b.submit(["a"], 1))
        await asyncio.sleep(0.05)  # arrives while the batcher waits for more
        f2 = asyncio.ensure_future(b.submit(["b"], 1))
        return await f1, await f2

    assert run(main()) == ([[("a", 1)]], [[("b", 1)]])
    b.close()
    assert [q for q, _, _ in backend.calls] == [["a", "b"]]


def test_loader_failure_is_reported():
    def boom():
        raise FileNotFoundError("no index here")

    b = Batcher(boom)
    b.start()
    assert b.ready.wait(10)
    assert b.status == "failed" and isinstance(b.error, FileNotFoundError)
    b.close()


@pytest.mark.parametrize("kwargs", [{"max_batch_queries": 0}, {"max_wait_ms": -1}, {"max_batch_docs": 0}])
def test_bad_knobs(kwargs):
    with pytest.raises(ValueError):
        Batcher(lambda: None, **kwargs)


def test_an_oversize_request_is_searched_alone_in_slices_and_never_merged():
    """max_batch_docs=10: a request of 12 queries x k=2 (24 hits) is oversize: it runs alone, in slices of 5
    queries (10 hits), its repeats searched once; the small requests queued with it are merged together."""
    backend = Recorder()
    b = Batcher(lambda: backend, max_batch_queries=100, max_batch_docs=10)
    b.start()
    big = [f"big{i}" for i in range(11)] + ["big3"]  # 12 queries, 11 distinct

    async def main():
        first = asyncio.ensure_future(b.submit(["first"], 2))
        while not backend.entered.is_set():
            await asyncio.sleep(0.001)
        futs = [asyncio.ensure_future(b.submit(qs, 2)) for qs in (["a"], big, ["b"], ["c"])]
        while b.queued() < 4:  # all four wait behind the held first call
            await asyncio.sleep(0.001)
        backend.release.set()
        await first
        return await asyncio.gather(*futs)

    a, big_answer, bb, c = run(main())
    b.close()
    assert big_answer == [[(q, 2)] for q in big] and (a, bb, c) == ([[("a", 2)]], [[("b", 2)]], [[("c", 2)]])
    calls = [q for q, _, _ in backend.calls]
    assert calls == [["first"], ["a", "b", "c"], big[0:5], big[5:10], big[10:11]]
    for q in calls:  # never a call mixing the oversize request with others, never more than 10 hits
        assert len(q) * 2 <= 10 and (all(x.startswith("big") for x in q) or not any(x.startswith("big") for x in q))
    assert b.stats.oversize_requests == 1


def test_small_requests_are_served_between_the_slices_of_an_oversize_one():
    """A small request that arrives while an oversize one is being searched waits for one slice, not for all."""
    class HoldBigFirstSlice(Recorder):
        def search(self, queries, k):
            if queries[0].startswith("big") and not self.entered.is_set():
                self.calls.append((list(queries), k, threading.current_thread().name))
                self.entered.set()
                assert self.release.wait(10)
                return [[(q, k)] for q in queries]
            return super().search(queries, k)

    backend = HoldBigFirstSlice(hold_first=False)
    b = Batcher(lambda: backend, max_batch_docs=4)
    b.start()
    big = [f"big{i}" for i in range(12)]

    async def main():
        big_f = asyncio.ensure_future(b.submit(big, 1))
        while not backend.entered.is_set():  # the first slice of the big request is being searched
            await asyncio.sleep(0.001)
        small = asyncio.ensure_future(b.submit(["small"], 1))
        while b.queued() < 1:
            await asyncio.sleep(0.001)
        backend.release.set()
        return await small, await big_f

    small, big_answer = run(main())
    b.close()
    assert small == [[("small", 1)]] and big_answer == [[(q, 1)] for q in big]
    assert [q for q, _, _ in backend.calls] == [big[0:4], ["small"], big[4:8], big[8:12]]


def test_the_batch_settings_are_declared_once():
    """medret serve's settings and the veRL tool's options are the batcher's declarations (issue 22 item 2): the
    same defaults and the same checks everywhere (the tool once took max_wait_ms up to any size)."""
    from medret.errors import ConfigError
    from medret.integrations.verl_tool import ToolOptions
    from medret.options import declarations
    from medret.serve.batcher import BatchOptions
    from medret.serve.settings import ServeSettings

    own = declarations(BatchOptions)
    assert set(own) == {"max_batch_queries", "max_batch_docs", "max_wait_ms"}
    for cls in (ServeSettings, ToolOptions):
        assert {n: declarations(cls)[n] for n in own} == own
        with pytest.raises(ConfigError, match=r"max_wait_ms=20000.0 is invalid"):
            cls(max_wait_ms=20_000.0)
    b = Batcher(lambda: None, ServeSettings(max_batch_docs=7), max_wait_ms=5)
    assert (b.max_batch_queries, b.max_batch_docs, b.max_wait_s) == (4096, 7, 0.005)
