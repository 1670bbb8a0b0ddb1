"""One GPU worker thread that batches concurrent requests into single engine calls.

Everything waiting for the same model goes to the engine in one call; the engine runs requests whose sampler
settings match (steps, sampler, start level) as one batch, each with its own seeded generator and therefore the
same audio it would get alone. The engine is only
ever touched from this thread, so the event loop never blocks on the GPU and two requests never race on the model.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from garycommon.errors import GaryError
from garycommon.metrics import JERRY_BATCH_SIZE

log = logging.getLogger(__name__)


@dataclass
class _Job:
    engine: Any
    request: Any
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]


class Batcher:
    """`await batcher.submit(engine, request)` -> the engine's result for that request."""

    def __init__(self, *, max_batch: int = 8, window_s: float = 0.0, name: str = "jerry-gpu") -> None:
        self.max_batch = max_batch
        self.window_s = window_s
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._started = False
        self._held: _Job | None = None
        self.batches_run = 0
        self.largest_batch = 0

    def start(self) -> None:
        if not self._started:
            self._started = True
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        if self._started:
            self._queue.put(None)
            self._thread.join(timeout)

    def call(self, fn: Callable[[], Any]) -> asyncio.Future[Any]:
        """Run any engine operation (load, warm-up, unload) on the worker thread, in order with generations."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.put(_Job(engine=None, request=fn, loop=loop, future=future))
        return future

    async def submit(self, engine: Any, request: Any) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.put(_Job(engine, request, loop, future))
        return await future

    def pending(self) -> int:
        return self._queue.qsize()

    # -- worker thread --------------------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            job, self._held = (self._held, None) if self._held is not None else (self._queue.get(), None)
            if job is None:
                return
            if job.engine is None:
                self._finish([job], lambda j=job: [j.request()])
                continue
            jobs = [job]
            stop = self._gather(jobs)
            # One engine call per model; the engine groups its requests into sampler runs by their settings.
            groups: dict[int, list[_Job]] = {}
            for j in jobs:
                groups.setdefault(id(j.engine), []).append(j)
            for group in groups.values():
                for start in range(0, len(group), self.max_batch):
                    chunk = group[start : start + self.max_batch]
                    self.batches_run += 1
                    self.largest_batch = max(self.largest_batch, len(chunk))
                    JERRY_BATCH_SIZE.observe(len(chunk))
                    self._generate(chunk)
            if stop:
                return

    def _gather(self, jobs: list[_Job]) -> bool:
        """Collect what is already waiting (and what arrives within the window) behind the first job. With no window
        an idle worker starts at once, and whatever arrives during a run forms the next batch."""
        deadline = time.perf_counter() + self.window_s
        while len(jobs) < self.max_batch * 4:
            timeout = deadline - time.perf_counter()
            try:
                nxt = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
            except queue.Empty:
                return False
            if nxt is None:
                return True
            if nxt.engine is None:
                # Management calls keep their place: run the batch collected so far first, then this call.
                self._held = nxt
                return False
            jobs.append(nxt)
        return False

    def _generate(self, chunk: list[_Job]) -> None:
        """One engine call for the chunk; if it fails, each request runs alone, so one bad request (or a batch too
        big for the memory left) does not fail the others."""
        if len(chunk) > 1:
            if self._finish(chunk, lambda: _engine_call(chunk), deliver_errors=False):
                return
            log.warning("batch of %d failed; running its requests one by one", len(chunk))
        for job in chunk:
            self._finish([job], lambda j=job: _engine_call([j]))

    @staticmethod
    def _finish(jobs: list[_Job], fn: Callable[[], list[Any]], *, deliver_errors: bool = True) -> bool:
        """Run `fn` and hand each job its result; returns whether it succeeded (errors go to the jobs unless
        `deliver_errors` is off)."""
        try:
            results = fn()
            if len(results) != len(jobs):
                raise RuntimeError(f"engine returned {len(results)} results for {len(jobs)} requests")
        except Exception as exc:  # delivered to the waiting requests; the worker keeps running
            if not deliver_errors:
                return False
            if not isinstance(exc, GaryError):
                log.exception("engine call failed")
            for j in jobs:
                j.loop.call_soon_threadsafe(_set_exception, j.future, exc)
            return False
        for j, result in zip(jobs, results, strict=True):
            j.loop.call_soon_threadsafe(_set_result, j.future, result)
        return True


def _engine_call(jobs: list[_Job]) -> list[Any]:
    return jobs[0].engine.generate([j.request for j in jobs])


def _set_result(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
