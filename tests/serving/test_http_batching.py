"""MicroBatcher (the HTTP service's request batching) on a real event loop and thread."""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from kgrec.serving.batching import BatchStats, MicroBatcher


def _run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def _doubler(calls):
    def run(scorer, payloads):
        calls.append([p for p in payloads])
        if any(p == "bad" for p in payloads):
            raise ValueError("bad payload")
        return [f"{scorer}:{p * 2}" for p in payloads]
    return run


def test_concurrent_jobs_share_calls_by_key_and_each_gets_its_own_result():
    calls: list[list] = []
    stats: list[BatchStats] = []

    async def main():
        with ThreadPoolExecutor(1) as pool:
            batcher = MicroBatcher("t", _doubler(calls), lambda: "v1", pool, max_wait_s=0.05, on_batch=stats.append)
            batcher.start()
            results = await asyncio.gather(*(batcher.submit(n, 1, key=n % 2) for n in range(6)))
            await batcher.stop()
            return results

    assert _run(main()) == [f"v1:{n * 2}" for n in range(6)]
    assert sorted(map(sorted, calls)) == [[0, 2, 4], [1, 3, 5]]  # one call per key
    assert sorted((s.jobs, s.rows) for s in stats) == [(3, 3), (3, 3)]


def test_a_failing_request_fails_alone():
    calls: list[list] = []

    async def main():
        with ThreadPoolExecutor(1) as pool:
            batcher = MicroBatcher("t", _doubler(calls), lambda: "v", pool, max_wait_s=0.05)
            batcher.start()
            results = await asyncio.gather(*(batcher.submit(p, 1, key=0) for p in (1, "bad", 3)),
                                           return_exceptions=True)
            await batcher.stop()
            return results

    first, bad, third = _run(main())
    assert (first, third) == ("v:2", "v:6")
    assert isinstance(bad, ValueError) and str(bad) == "bad payload"
    assert calls[0] == [1, "bad", 3] and calls[1:] == [[1], ["bad"], [3]]  # the group, then one by one


@pytest.mark.parametrize("max_rows", [2, 5])
def test_a_window_closes_at_max_rows(max_rows):
    stats: list[BatchStats] = []

    async def main():
        with ThreadPoolExecutor(1) as pool:
            batcher = MicroBatcher("t", lambda s, ps: ps, lambda: None, pool, max_wait_s=0.2, max_rows=max_rows,
                                   on_batch=stats.append)
            batcher.start()
            await asyncio.gather(*(batcher.submit(n, 1, key=0) for n in range(6)))
            await batcher.stop()

    _run(main())
    assert max(s.rows for s in stats) <= max_rows and sum(s.rows for s in stats) == 6


def test_a_lone_request_does_not_wait_for_the_window():
    async def main(in_flight):
        with ThreadPoolExecutor(1) as pool:
            batcher = MicroBatcher("t", lambda s, ps: ps, lambda: None, pool, max_wait_s=1.0, in_flight=in_flight)
            batcher.start()
            start = time.perf_counter()
            await batcher.submit(1, 1, key=0)
            seconds = time.perf_counter() - start
            await batcher.stop()
            return seconds

    assert _run(main(lambda: 1)) < 0.9  # nothing else in flight: scored without waiting out the window
    assert _run(main(lambda: 2)) >= 1.0  # another request on its way: the window stays open (bounded)
