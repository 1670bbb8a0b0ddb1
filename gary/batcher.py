"""Several jobs, one engine call: generations that reach the GPU worker while it is busy are run together next.

The engine batches rows of different prompts, parameters and even models; on a GPU a batch costs little more than
one request (the measured peer: 105 s for one 30 s clip, 118 s for eight). The first request never waits for company,
so a lone user sees no extra latency. If a batch fails, its requests are retried one by one so one bad request (or an
out-of-memory batch) cannot fail the others.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
PartialAudio = Callable[[Any, int], None]  # (audio so far [C, T], sample rate), from the GPU thread


@dataclass
class _Item:
    request: Any
    progress: Progress | None
    future: asyncio.Future[tuple[Any, float, int]] = field(repr=False)
    partial: PartialAudio | None = None


class GenerationBatcher:
    def __init__(self, in_gpu_thread: Callable[..., Awaitable[Any]], engine: Callable[[], Any], max_batch: int,
                 partial_seconds: float = 0.0) -> None:
        self._in_gpu_thread = in_gpu_thread
        self._engine = engine
        self.max_batch = max(1, max_batch)
        self.partial_seconds = partial_seconds
        self._pending: list[_Item] = []
        self._drainer: asyncio.Task[None] | None = None

    async def generate(self, request: Any, progress: Progress | None = None,
                       partial: PartialAudio | None = None) -> tuple[Any, float, int]:
        """(GenerationResult, seconds the engine call took, how many requests shared it). `partial(audio, rate)` is
        called from the GPU thread with the audio so far, every `partial_seconds` of it, when given."""
        item = _Item(request, progress, asyncio.get_running_loop().create_future(), partial)
        self._pending.append(item)
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain(), name="gary-batcher")
        return await item.future

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch:]
            batch = [item for item in batch if not item.future.done()]  # (cancelled while waiting)
            if batch:
                await self._run(batch)

    async def _run(self, batch: list[_Item]) -> None:
        def progress(step: int, total: int) -> None:
            for item in batch:
                if item.progress is not None:
                    item.progress(step, total)

        def partial(index: int, audio: Any, rate: int) -> None:
            hook = batch[index].partial
            if hook is not None:
                hook(audio, rate)

        wants_partials = self.partial_seconds > 0 and any(item.partial is not None for item in batch)
        extra = (partial, self.partial_seconds) if wants_partials else ()
        started = time.monotonic()
        try:
            results = await self._in_gpu_thread(
                lambda: self._engine().generate([i.request for i in batch], progress, *extra))
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch[0], exc=exc)
                return
            log.warning("batch of %d failed (%s); running its requests one by one", len(batch), exc)
            for item in batch:
                await self._run([item])
            return
        elapsed = time.monotonic() - started
        for item, result in zip(batch, results, strict=True):
            _settle(item, value=(result, elapsed, len(batch)))

    async def aclose(self) -> None:
        if self._drainer is not None:
            self._drainer.cancel()


def _settle(item: _Item, *, value: tuple[Any, float, int] | None = None, exc: BaseException | None = None) -> None:
    if item.future.done():
        return
    if exc is not None:
        item.future.set_exception(exc)
    else:
        item.future.set_result(value)  # type: ignore[arg-type]
