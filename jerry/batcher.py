"""How jerry's requests share the GPU worker (`garycommon.gpuworker`): everything waiting for the same model goes to
the engine in one call.

Whatever queues up while the worker is busy (and arrives within the batch window) is gathered when it gets free and
grouped by engine; the engine then runs requests whose sampler settings match (steps, sampler, start level) as one
batch, each with its own seeded generator and therefore the same audio it would get alone. Loads, warm-ups and
unloads (`call`) run on the same thread, in their place in the line, so the event loop never blocks on the GPU and
two requests never race on a model.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from garycommon.gpuworker import GpuWorker
from garycommon.metrics import JERRY_BATCH_SIZE

from .sao import SAORequest, SAOResult
from .sao.types import SAOModel

GATHER_BATCHES = 4  # a pickup takes up to this many batches' worth of requests, across models


class Batcher:
    """`await batcher.submit(engine, request)` -> the engine's result for that request."""

    def __init__(self, *, max_batch: int = 8, window_s: float = 0.0, name: str = "jerry-gpu") -> None:
        self.worker = GpuWorker(name, _generate, max_batch=max_batch, window_s=window_s,
                                gather_limit=max_batch * GATHER_BATCHES, on_batch=JERRY_BATCH_SIZE.observe)

    @property
    def max_batch(self) -> int:
        return self.worker.max_batch

    @property
    def batches_run(self) -> int:
        return self.worker.batches_run

    @property
    def largest_batch(self) -> int:
        return self.worker.largest_batch

    def start(self) -> None:
        self.worker.start()

    def stop(self, timeout: float = 30.0) -> None:
        self.worker.stop(timeout)

    def call(self, fn: Callable[[], Any]) -> asyncio.Future[Any]:
        """Run any engine operation (load, warm-up, unload) on the worker thread, in order with generations."""
        return self.worker.call(fn)

    async def submit(self, engine: SAOModel, request: SAORequest) -> SAOResult:
        result: SAOResult = await self.worker.run(request, key=engine)
        return result

    def pending(self) -> int:
        return self.worker.pending()


def _generate(engine: SAOModel, requests: list[SAORequest]) -> list[SAOResult]:
    return engine.generate(requests)
