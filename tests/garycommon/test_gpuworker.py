"""The shared GPU worker and resident lease: order, batching by key, a bad request failing alone, the two gathering
policies, cancellation, shutdown, and a lease held again after the gateway loses it."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from garycommon.gpuworker import GpuWorker
from garycommon.residency import ResidentLease, hold_resident


class Engine:
    """Doubles numbers; refuses negatives (failing the whole call, like a real engine's validation)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, list[int]]] = []
        self.threads: set[str] = set()

    def __call__(self, key: Any, requests: list[int]) -> list[int]:
        self.calls.append((key, list(requests)))
        self.threads.add(threading.current_thread().name)
        if any(r < 0 for r in requests):
            raise ValueError(f"negative request in {requests}")
        return [2 * r for r in requests]


async def _hold(worker: GpuWorker) -> tuple[threading.Event, asyncio.Future[Any]]:
    """Occupy the worker with a call until the returned event is set."""
    release, started = threading.Event(), threading.Event()

    def block() -> None:
        started.set()
        release.wait(10)

    busy = worker.call(block)
    await asyncio.to_thread(started.wait, 10)
    return release, busy


async def test_requests_gathered_behind_a_busy_thread_share_a_call_per_key() -> None:
    engine = Engine()
    worker = GpuWorker("test-gpu", engine, max_batch=2, gather_limit=8)
    try:
        release, busy = await _hold(worker)
        runs = [asyncio.ensure_future(worker.run(n, key=key)) for n, key in
                ((1, "a"), (2, "b"), (3, "a"), (4, "a"), (5, "b"))]
        while worker.pending() < 5:  # noqa: ASYNC110 - the queue is plain state
            await asyncio.sleep(0.01)
        release.set()
        await busy
        assert await asyncio.gather(*runs) == [2, 4, 6, 8, 10]
    finally:
        await asyncio.to_thread(worker.stop)
    # grouped by key in order of first appearance, max_batch rows per call
    assert engine.calls == [("a", [1, 3]), ("a", [4]), ("b", [2, 5])]
    assert worker.batches_run == 3 and worker.largest_batch == 2
    assert engine.threads == {"test-gpu"}


async def test_a_failed_batch_is_retried_one_by_one_so_the_bad_request_fails_alone() -> None:
    engine = Engine()
    sizes: list[int] = []
    worker = GpuWorker("test-gpu", engine, max_batch=8, on_batch=sizes.append)
    try:
        release, _ = await _hold(worker)
        good = [asyncio.ensure_future(worker.run(n)) for n in (1, 2)]
        bad = asyncio.ensure_future(worker.run(-1))
        while worker.pending() < 3:  # noqa: ASYNC110 - the queue is plain state
            await asyncio.sleep(0.01)
        release.set()
        assert await asyncio.gather(*good) == [2, 4]
        with pytest.raises(ValueError, match="negative"):
            await bad
        assert await worker.run(5) == 10, "the worker carries on"
    finally:
        await asyncio.to_thread(worker.stop)
    assert [reqs for _, reqs in engine.calls] == [[1, 2, -1], [1], [2], [-1], [5]]
    assert sizes == [3, 1], "one observation per batch, the retries not counted"


async def test_first_alone_never_waits_for_company_but_later_arrivals_share_the_next_call() -> None:
    engine = Engine()
    worker = GpuWorker("test-gpu", engine, max_batch=4, first_alone=True)
    try:
        release, _ = await _hold(worker)
        runs = [asyncio.ensure_future(worker.run(n)) for n in (1, 2, 3)]
        while worker.pending() < 3:  # noqa: ASYNC110 - the queue is plain state
            await asyncio.sleep(0.01)
        release.set()
        assert await asyncio.gather(*runs) == [2, 4, 6]
    finally:
        await asyncio.to_thread(worker.stop)
    assert [reqs for _, reqs in engine.calls] == [[1], [2, 3]]


async def test_calls_keep_their_place_between_requests() -> None:
    order: list[str] = []

    def run_batch(_key: Any, requests: list[str]) -> list[str]:
        order.append("+".join(requests))
        return requests

    worker = GpuWorker("test-gpu", run_batch, max_batch=8)
    try:
        release, _ = await _hold(worker)
        first = asyncio.ensure_future(worker.run("a"))
        await asyncio.sleep(0.02)
        load = worker.call(order.append, "load")
        second = asyncio.ensure_future(worker.run("b"))
        while worker.pending() < 3:  # noqa: ASYNC110 - the queue is plain state
            await asyncio.sleep(0.01)
        release.set()
        await asyncio.gather(first, load, second)
    finally:
        await asyncio.to_thread(worker.stop)
    assert order == ["a", "load", "b"]


async def test_a_cancelled_wait_never_runs_and_stop_cancels_what_waits() -> None:
    engine = Engine()
    worker = GpuWorker("test-gpu", engine, max_batch=8)
    release, busy = await _hold(worker)
    withdrawn = asyncio.ensure_future(worker.run(1))
    kept = asyncio.ensure_future(worker.run(2))
    while worker.pending() < 2:  # noqa: ASYNC110 - the queue is plain state
        await asyncio.sleep(0.01)
    withdrawn.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await withdrawn
    release.set()
    assert await kept == 4
    await busy
    assert engine.calls == [(None, [2])]
    release, busy = await _hold(worker)
    queued = asyncio.ensure_future(worker.run(3))
    while worker.pending() < 1:  # noqa: ASYNC110 - the queue is plain state
        await asyncio.sleep(0.01)
    stopping = asyncio.ensure_future(asyncio.to_thread(worker.stop, 10))
    await asyncio.sleep(0.05)
    release.set()
    await stopping
    await busy  # the running call finished
    with pytest.raises(asyncio.CancelledError):
        await queued
    with pytest.raises(RuntimeError, match="stopped"):
        worker.submit(print)
    assert engine.calls == [(None, [2])]


async def test_submit_from_any_thread_and_errors_reach_the_caller() -> None:
    worker = GpuWorker("test-gpu")
    try:
        assert worker.submit(threading.current_thread).result(5).name == "test-gpu"
        with pytest.raises(ZeroDivisionError):
            await worker.call(lambda: 1 / 0)
        assert await worker.call(lambda a, b=0: a + b, 1, b=2) == 3
        with pytest.raises(RuntimeError, match="calls only"):
            await worker.run(1)
    finally:
        await asyncio.to_thread(worker.stop)


@dataclass
class FakeLease:
    id: str
    lost: bool = False


class FakeGateway:
    def __init__(self, refusals: int = 0) -> None:
        self.refusals = refusals
        self.granted: list[FakeLease] = []
        self.released: list[str] = []

    @contextlib.asynccontextmanager
    async def lease(self) -> AsyncIterator[FakeLease]:
        if self.refusals:
            self.refusals -= 1
            raise ConnectionError("gateway down")
        lease = FakeLease(f"lease-{len(self.granted)}")
        self.granted.append(lease)
        try:
            yield lease
        finally:
            self.released.append(lease.id)


async def test_resident_lease_is_taken_released_and_reports_loss() -> None:
    gateway = FakeGateway()
    lease = ResidentLease(gateway.lease)
    await lease.acquire()
    assert lease.held and not lease.lost and gateway.granted[0].id == "lease-0"
    gateway.granted[0].lost = True
    assert lease.lost
    await lease.release()
    assert not lease.held and not lease.lost and gateway.released == ["lease-0"]
    solo = ResidentLease(None)
    await solo.acquire()
    assert not solo.held and not solo.lost


async def test_a_held_lease_is_taken_again_when_lost_or_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import garycommon.residency as residency

    monkeypatch.setattr(residency, "RETRY_FIRST_SECONDS", 0.01)
    gateway = FakeGateway(refusals=1)
    states: list[dict[str, object]] = []
    holder = asyncio.ensure_future(hold_resident(gateway.lease, states.append, check_seconds=0.01))
    try:
        while not gateway.granted:  # noqa: ASYNC110 - polls the fake gateway
            await asyncio.sleep(0.01)
        gateway.granted[0].lost = True
        while len(gateway.granted) < 2:  # noqa: ASYNC110 - polls the fake gateway
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.02)
    finally:
        holder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await holder
    assert [s["state"] for s in states] == ["waiting", "retrying", "waiting", "held", "waiting", "held"]
    assert states[1]["error"] == "gateway down" and states[-1]["lease_id"] == "lease-1"
    assert gateway.released == ["lease-0", "lease-1"], "the lost lease and, at shutdown, the held one"


async def test_a_first_request_waits_briefly_for_requests_the_service_is_preparing() -> None:
    """A burst: the first request would start alone, but the service says two more are being prepared; they arrive
    within the wait and all three share one call. Without expected company a lone request starts at once."""
    engine = Engine()
    preparing = [2]
    worker = GpuWorker("test-gpu", engine, max_batch=8, first_alone=True, company=lambda: preparing[0],
                       company_wait_s=5.0)
    try:
        first = asyncio.ensure_future(worker.run(1))
        await asyncio.sleep(0.2)  # the two others finish preparing while the first waits
        preparing[0] = 0
        others = [asyncio.ensure_future(worker.run(n)) for n in (2, 3)]
        assert await asyncio.wait_for(asyncio.gather(first, *others), 4) == [2, 4, 6]
        assert engine.calls == [(None, [1, 2, 3])]
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await worker.run(4) == 8  # nobody expected: no waiting
        assert loop.time() - started < 1.0 and engine.calls[-1] == (None, [4])
        # a preparation that ends without a request (its input failed) ends the wait too, well before the cap
        preparing[0] = 1
        lone = asyncio.ensure_future(worker.run(5))
        await asyncio.sleep(0.2)
        preparing[0] = 0
        assert await asyncio.wait_for(lone, 2) == 10 and engine.calls[-1] == (None, [5])
    finally:
        await asyncio.to_thread(worker.stop)
