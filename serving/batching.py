"""Micro-batching of concurrent requests for the HTTP service (:mod:`kgrec.serving.http`).

Requests that arrive within a short window are scored together: one user-tower call (or one
text-encoder pass) and one matrix product for all their rows. A request is a :class:`Job`: its
rows, a *group key* (requests can share a call only when everything but the rows is equal: ``k``,
filters, weights ...) and a future for its answer.

:class:`MicroBatcher` runs one asyncio task per route kind. It waits for the first job, then at
most ``max_wait_s`` for more (or until ``max_rows`` rows are queued), takes the whole window,
groups it by key and runs each group as one call of ``run(scorer, group)`` on the scoring
thread, off the event loop: the loop keeps accepting requests (and answering ``/healthz``) while
a batch is scored, and those requests form the next window. A job is never split across calls,
and a call reads one scorer, so every row of a response comes from the same model version.

When a grouped call raises, the batcher scores its jobs one by one, so a bad request answers
its own error and never fails the requests it was batched with.
"""
from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

S = TypeVar("S")  # the scorer (or a holder of one) a call reads

#: ``run(scorer, payloads)`` -> one result per payload (the payloads of one group, in order).
RunBatch = Callable[[Any, Sequence[Any]], Sequence[Any]]


@dataclass
class Job:
    """One request: ``payload`` (what ``run`` reads), ``rows`` (its size, for ``max_rows``),
    ``key`` (jobs with equal keys can share one call) and the future of its result."""

    payload: Any
    rows: int
    key: Hashable
    future: asyncio.Future = field(repr=False)


@dataclass
class BatchStats:
    """What one call scored: the route kind, the jobs and rows in it and its seconds."""

    kind: str
    jobs: int
    rows: int
    seconds: float


class MicroBatcher(Generic[S]):
    """Collects :class:`Job` s of one kind and scores them in batches on ``executor``.

    Args:
        kind: a name for metrics (``recommend``, ``search`` ...).
        run: ``run(scorer, payloads) -> results``, called on the executor with a group's payloads.
        current: returns the scorer to use; read once per window, so a swap takes effect
            between windows and never inside one.
        executor: where calls run (the service's single scoring thread).
        max_wait_s: how long a window stays open after its first job (default 2 ms).
        max_rows: a window closes early once this many rows are queued (default 256).
        on_batch: called with :class:`BatchStats` after each call (metrics).
        in_flight: the number of requests of this kind the server holds (queued or not yet); when
            every one of them is in the window already, the window closes without waiting, so a
            lone request is scored at once.
    """

    def __init__(
        self,
        kind: str,
        run: RunBatch,
        current: Callable[[], S],
        executor: Executor,
        max_wait_s: float = 0.002,
        max_rows: int = 256,
        on_batch: Callable[[BatchStats], None] | None = None,
        in_flight: Callable[[], int] | None = None,
    ) -> None:
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s}")
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        self.kind, self.run, self.current, self.executor = kind, run, current, executor
        self.max_wait_s, self.max_rows, self.on_batch, self.in_flight = max_wait_s, max_rows, on_batch, in_flight
        self._queue: asyncio.Queue[Job] | None = None
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        """Start the collecting task on the running event loop."""
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher-{self.kind}")

    async def stop(self) -> None:
        """Stop collecting; queued jobs fail with CancelledError."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while self._queue is not None and not self._queue.empty():
            self._queue.get_nowait().future.cancel()

    async def submit(self, payload: Any, rows: int, key: Hashable) -> Any:
        """Queue one request and wait for its result (its exception re-raised here)."""
        if self._queue is None:
            raise RuntimeError(f"batcher {self.kind!r} is not started")
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(Job(payload, max(int(rows), 1), key, future))
        return await future

    async def _window(self) -> list[Job]:
        assert self._queue is not None
        jobs = [await self._queue.get()]
        rows = jobs[0].rows
        deadline = time.monotonic() + self.max_wait_s
        while rows < self.max_rows:
            while not self._queue.empty() and rows < self.max_rows:  # take what is there without waiting
                jobs.append(self._queue.get_nowait())
                rows += jobs[-1].rows
            left = deadline - time.monotonic()
            if rows >= self.max_rows or left <= 0:
                break
            if self.in_flight is not None and self.in_flight() <= len(jobs):
                break  # no other request of this kind is on its way
            try:
                jobs.append(await asyncio.wait_for(self._queue.get(), left))
                rows += jobs[-1].rows
            except TimeoutError:
                break
        return jobs

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._window()
            scorer = self.current()
            groups: dict[Hashable, list[Job]] = {}
            for job in jobs:
                groups.setdefault(job.key, []).append(job)
            for group in groups.values():
                live = [j for j in group if not j.future.done()]  # a client that went away
                if not live:
                    continue
                start = time.perf_counter()
                try:
                    results = await loop.run_in_executor(self.executor, self._call, scorer, live)
                except Exception as error:
                    results = [error] * len(live)
                seconds = time.perf_counter() - start
                for job, result in zip(live, results):
                    if job.future.done():
                        continue
                    if isinstance(result, BaseException):
                        job.future.set_exception(result)
                    else:
                        job.future.set_result(result)
                if self.on_batch is not None:
                    self.on_batch(BatchStats(self.kind, len(live), sum(j.rows for j in live), seconds))

    def _call(self, scorer: S, jobs: list[Job]) -> list[Any]:
        """One call for the group; if it raises, each job alone (its own result or exception)."""
        payloads = [j.payload for j in jobs]
        try:
            results = list(self.run(scorer, payloads))
        except Exception as error:
            if len(jobs) == 1:
                return [error]
            results = []
            for payload in payloads:
                try:
                    results.append(self.run(scorer, [payload])[0])
                except Exception as single:
                    results.append(single)
        if len(results) != len(jobs):
            raise RuntimeError(f"batch {self.kind!r}: {len(results)} results for {len(jobs)} requests")
        return results
