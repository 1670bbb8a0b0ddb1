"""One thread owns the GPU: every model call of a service runs on it, one at a time, in order, never on the event loop.

Two kinds of work go in:

* calls (`call` from the event loop, `submit` from any thread): a load, a warm-up, an unload — run alone, in their
  place in the line;
* requests (`run`): work the service lets the worker batch. When the thread gets free it takes the next request and
  the requests queued right behind it (never past a call, which keeps its place), groups them by the key each came
  with, and hands each group, `max_batch` at a time, to the service's `run_batch(key, requests)`. If a batch fails,
  its requests run again one by one, so one bad request (or a batch too big for the memory left) fails alone.

What differs between services is only how requests group: the key, `max_batch`, a gathering window, and whether a
request that finds no other request ahead of it starts alone (`first_alone`: it never waits for company, even behind
a call) or waits to be gathered with whatever queues up behind a busy thread. A service that knows requests are on
their way (`company`: how many are being prepared right now) lets a first request wait up to `company_wait_s` for
them, so a burst of clients shares one engine call instead of queueing behind the first of them.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

from .errors import GaryError

log = logging.getLogger(__name__)

T = TypeVar("T")
RunBatch = Callable[[Any, list[Any]], Sequence[Any]]  # (group key, requests) -> one result per request, in order


@dataclass
class _Call:
    fn: Callable[[], Any]
    future: Future[Any]


@dataclass
class _Request:
    key: Hashable
    request: Any
    future: Future[Any]
    alone: bool = False


class GpuWorker:
    def __init__(self, name: str, run_batch: RunBatch | None = None, *, max_batch: int = 1, window_s: float = 0.0,
                 gather_limit: int | None = None, first_alone: bool = False,
                 on_batch: Callable[[int], None] | None = None, company: Callable[[], int] | None = None,
                 company_wait_s: float = 0.0) -> None:
        self.name = name
        self._run_batch = run_batch
        self.max_batch = max(1, max_batch)
        self.window_s = window_s
        self.gather_limit = max(1, gather_limit or self.max_batch)  # requests taken per pickup, all groups together
        self.first_alone = first_alone
        self._on_batch = on_batch
        self._company = company
        self.company_wait_s = company_wait_s
        self._cv = threading.Condition()
        self._queue: deque[_Call | _Request] = deque()
        self._batch_running = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self.batches_run = 0  # engine calls for requests (retries one by one not counted)
        self.largest_batch = 0

    # --- putting work in ------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the thread now (it also starts on the first piece of work)."""
        with self._cv:
            self._start_locked()

    def submit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Future[T]:
        """Queue `fn(*args, **kwargs)` from any thread; its concurrent future settles when it ran."""
        future: Future[T] = Future()
        self._put(_Call(functools.partial(fn, *args, **kwargs), future))
        return future

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> asyncio.Future[T]:
        """`await worker.call(fn, ...)` from the event loop (cancelling the await withdraws it if not yet started)."""
        return asyncio.wrap_future(self.submit(fn, *args, **kwargs))

    async def run(self, request: Any, key: Hashable = None) -> Any:
        """Queue one request for `run_batch`, batched with others of the same key; returns its result."""
        if self._run_batch is None:
            raise RuntimeError(f"{self.name} has no run_batch: it takes calls only")
        future: Future[Any] = Future()
        self._put(_Request(key, request, future))
        return await asyncio.wrap_future(future)

    def pending(self) -> int:
        """Calls and requests waiting (not the one running)."""
        with self._cv:
            return len(self._queue)

    def _put(self, entry: _Call | _Request) -> None:
        with self._cv:
            if self._closed:
                raise RuntimeError(f"{self.name} is stopped")
            if isinstance(entry, _Request) and self.first_alone:
                entry.alone = (not self._batch_running and not any(isinstance(e, _Request) for e in self._queue)
                               and not self._expected())
            self._queue.append(entry)
            self._start_locked()
            self._cv.notify_all()

    def _start_locked(self) -> None:
        if self._thread is None and not self._closed:
            self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
            self._thread.start()

    def stop(self, timeout: float | None = 30.0) -> None:
        """No new work; what waits is cancelled; the running piece finishes (waited for up to `timeout` seconds, 0:
        not at all). Blocking: from the event loop, use `asyncio.to_thread(worker.stop)` or timeout=0."""
        with self._cv:
            self._closed = True
            waiting, self._queue = list(self._queue), deque()
            self._cv.notify_all()
            thread = self._thread
        for entry in waiting:
            entry.future.cancel()
        if thread is not None and timeout != 0 and thread is not threading.current_thread():
            thread.join(timeout)

    # --- the thread -----------------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._closed:
                    self._cv.wait()
                if not self._queue:
                    return
                entry = self._queue.popleft()
                if isinstance(entry, _Call):
                    batch: list[_Request] = []
                else:
                    batch = [entry]
                    self._batch_running = True
                    if not entry.alone:
                        self._gather(batch)
            try:
                if isinstance(entry, _Call):
                    _run_call(entry)
                else:
                    self._run_requests([r for r in batch if r.future.set_running_or_notify_cancel()])
            except BaseException as exc:  # noqa: BLE001 - nobody may wait forever; the thread carries on
                for r in batch:
                    if not r.future.done():
                        r.future.set_exception(exc)
                log.exception("%s: unexpected failure", self.name)
            finally:
                with self._cv:
                    self._batch_running = False

    def _expected(self) -> int:
        """Requests the service says are on their way (0 without a `company` hook, or when it fails)."""
        if self._company is None:
            return 0
        try:
            return max(0, int(self._company()))
        except Exception:  # noqa: BLE001 - a hint only: never let it stop the worker
            return 0

    def _gather(self, batch: list[_Request]) -> None:
        """(With the lock held.) Take the requests queued right behind the first — and those arriving within the
        window, or while the service expects more (up to `company_wait_s`) — up to the gathering limit; a call ends
        the gathering and keeps its place."""
        start = time.monotonic()
        while len(batch) < self.gather_limit:
            if self._queue:
                if not isinstance(self._queue[0], _Request):
                    return
                batch.append(self._queue.popleft())  # type: ignore[arg-type]
                continue
            if self._closed:
                return
            now = time.monotonic()
            left = start + self.window_s - now
            if left <= 0 and self._expected() and now < start + self.company_wait_s:
                left = min(0.01, start + self.company_wait_s - now)  # re-ask: a preparation may end without a request
            if left <= 0:
                return
            self._cv.wait(left)

    def _run_requests(self, batch: list[_Request]) -> None:
        groups: dict[Hashable, list[_Request]] = {}
        for r in batch:
            groups.setdefault(r.key, []).append(r)
        for key, members in groups.items():
            for start in range(0, len(members), self.max_batch):
                chunk = members[start:start + self.max_batch]
                self.batches_run += 1
                self.largest_batch = max(self.largest_batch, len(chunk))
                if self._on_batch is not None:
                    self._on_batch(len(chunk))
                self._run_chunk(key, chunk)

    def _run_chunk(self, key: Hashable, chunk: list[_Request]) -> None:
        if len(chunk) > 1:
            try:
                results = self._batch_call(key, chunk)
            except Exception as exc:
                log.warning("%s: batch of %d failed (%s); running its requests one by one", self.name, len(chunk), exc)
            else:
                for r, result in zip(chunk, results, strict=True):
                    r.future.set_result(result)
                return
        for r in chunk:
            try:
                (result,) = self._batch_call(key, [r])
            except Exception as exc:
                if not isinstance(exc, GaryError):
                    log.exception("%s: request failed", self.name)
                r.future.set_exception(exc)
            else:
                r.future.set_result(result)

    def _batch_call(self, key: Hashable, chunk: list[_Request]) -> list[Any]:
        assert self._run_batch is not None
        results = list(self._run_batch(key, [r.request for r in chunk]))
        if len(results) != len(chunk):
            raise RuntimeError(f"engine returned {len(results)} results for {len(chunk)} requests")
        return results


def _run_call(call: _Call) -> None:
    if not call.future.set_running_or_notify_cancel():
        return  # cancelled while waiting
    try:
        result = call.fn()
    except BaseException as exc:  # noqa: BLE001 - delivered to the caller, like an executor does
        call.future.set_exception(exc)
    else:
        call.future.set_result(result)
