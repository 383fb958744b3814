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


@pytest.mark.parametrize("kwargs", [{"max_batch_queries": 0}, {"max_wait_ms": -1}])
def test_bad_knobs(kwargs):
    with pytest.raises(ValueError):
        Batcher(lambda: None, **kwargs)
