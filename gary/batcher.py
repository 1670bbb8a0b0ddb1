"""How gary's generations share the GPU worker: jobs that reach it while it is busy run together, in one engine call.

The engine batches rows of different prompts, parameters and even models, so every generation has the same group;
on a GPU a batch costs little more than one request (the measured peer: 105 s for one 30 s clip, 118 s for eight).
The first request never waits for company, so a lone user sees no extra latency, unless gary is preparing other
generations or has just queued them (a burst of clients): it then waits for them, briefly, and they run as one
call (`Company`). The thread,
the order, and the retry one by one of a failed batch are `garycommon.gpuworker`'s.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from garycommon.gpuworker import GpuWorker

from .engine_protocol import GenerationEngine

# Preparing a request (decoding the input, resampling) takes ~0.1-0.3 s: waiting that long for a burst's other
# requests costs the first of them far less than queueing the rest behind its whole generation would cost them.
COMPANY_WAIT_S = 0.3
# A generation submitted to the queue this recently counts as on its way (the gateway grants a burst within ~0.4 s on
# an H100 stack); an older one waits for VRAM or died, and nobody should wait for it.
ARRIVAL_HORIZON_S = 1.0
Progress = Callable[[int, int], None]
PartialAudio = Callable[[Any, int], None]  # (audio so far [C, T], sample rate), from the GPU thread


class Company:
    """The generations on their way to this process's GPU worker: just submitted to the queue, or granted and still
    being prepared. Called from the GPU thread (`__call__`) while the event loop updates it, hence the lock."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._submitted: dict[str, float] = {}
        self._preparing = 0

    def submitted(self, job_id: str) -> None:
        with self._lock:
            self._submitted[job_id] = self._clock()

    def preparing(self, job_id: str) -> None:
        """Granted: no longer waiting for the queue, now decoding its input."""
        with self._lock:
            self._submitted.pop(job_id, None)
            self._preparing += 1

    def prepared(self) -> None:
        """Reaching the worker (or failing on the way): no longer expected."""
        with self._lock:
            self._preparing -= 1

    def __call__(self) -> int:
        horizon = self._clock() - ARRIVAL_HORIZON_S
        with self._lock:
            for job_id in [j for j, at in self._submitted.items() if at < horizon]:
                del self._submitted[job_id]
            return len(self._submitted) + self._preparing


@dataclass
class _Item:
    request: Any
    progress: Progress | None
    partial: PartialAudio | None


class GenerationBatcher:
    def __init__(self, engine: Callable[[], GenerationEngine], max_batch: int, partial_seconds: float = 0.0, *,
                 name: str = "gary-gpu", company: Callable[[], int] | None = None) -> None:
        """`company`: how many generations are on their way (a `Company`); a first request waits up to COMPANY_WAIT_S
        for them, so clients pressing at once share one engine call."""
        self._engine = engine
        self.partial_seconds = partial_seconds
        # All of gary's GPU work (generations, preloads) goes through this one worker.
        self.worker = GpuWorker(name, self._run_batch, max_batch=max_batch, first_alone=True, company=company,
                                company_wait_s=COMPANY_WAIT_S)

    @property
    def max_batch(self) -> int:
        return self.worker.max_batch

    async def generate(self, request: Any, progress: Progress | None = None,
                       partial: PartialAudio | None = None) -> tuple[Any, float, int]:
        """(GenerationResult, seconds the engine call took, how many requests shared it). `partial(audio, rate)` is
        called from the GPU thread with the audio so far, every `partial_seconds` of it, when given."""
        result: tuple[Any, float, int] = await self.worker.run(_Item(request, progress, partial))
        return result

    def _run_batch(self, _key: object, batch: list[_Item]) -> list[tuple[Any, float, int]]:
        """On the GPU thread: one engine call for the batch, progress fanned out to all, partials to their own."""
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
        results = self._engine().generate([item.request for item in batch], progress, *extra)
        elapsed = time.monotonic() - started
        return [(result, elapsed, len(batch)) for result in results]
