"""Runs transforms one at a time per GPU.

Inside this process an asyncio lock serialises transforms (the original had none: a second request could interleave
at a progress callback and hijack the model's callback). Across services the GPU is shared through the queue
gateway: when QUEUE_URL is set, the loaded weights hold a resident lease (model_host) and each transform leases its
working memory on the transform lane for its duration — unless gary already holds the task's lease and passes its
`lease_id`/`fencing_token`, in which case taking a second one would deadlock the lane (capacity 1) and we run
under gary's. The resident lease is taken before the working one, never while holding it, so two waits never chain.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import torch

from garycommon.audio import resample
from garycommon.errors import ErrorCode, GaryError
from garycommon.metrics import TERRY_TRANSFORM_SECONDS
from garycommon.settings import Settings

from .model_host import ModelHost, is_oom, oom_error
from .progress import TransformProgress

log = logging.getLogger(__name__)

DEFAULT_ESTIMATE_S = 30.0  # the original stack's default wait estimate before anything was measured
LEASE_NOTICE_AFTER_S = 1.0
TASK_LEASE = re.compile(r"transform:[A-Za-z0-9_.-]{1,128}")


@dataclass
class TransformJob:
    session_id: str
    prompt: str
    audio: torch.Tensor  # [2, T] at `rate`
    rate: int
    seconds: float
    flowstep: float
    solver: str
    steps: int
    seed: int | None = None
    lease_id: str | None = None
    fencing_token: int | str | None = None
    client_key: str | None = None  # the end client's fairness key for terry's own lease (never terry's key)


@dataclass
class TransformOutcome:
    audio: torch.Tensor  # [2, T'] at `sample_rate` (the engine's)
    sample_rate: int
    seed: int
    seconds: float
    loaded_model: bool
    lease: str  # "gateway", "task" (gary's) or "local"


class TransformRunner:
    def __init__(self, settings: Settings, host: ModelHost, queue: Any | None) -> None:
        self.settings = settings
        self.host = host
        self.queue = queue  # garycommon.queueclient.QueueClient when QUEUE_URL is set
        self._lock = asyncio.Lock()
        self._waiting = 0
        self._active = 0
        self._rate: dict[str, float] = {}  # solver -> seconds of compute per second of audio (moving average)

    @property
    def waiting(self) -> int:
        return self._waiting

    @property
    def active(self) -> int:
        return self._active

    def estimate(self, job: TransformJob) -> float:
        rate = self._rate.get(job.solver)
        return rate * job.seconds if rate is not None else DEFAULT_ESTIMATE_S

    def _learn(self, job: TransformJob, elapsed: float) -> None:
        sample = elapsed / max(job.seconds, 1e-3)
        old = self._rate.get(job.solver)
        self._rate[job.solver] = sample if old is None else 0.7 * old + 0.3 * sample

    async def run(self, job: TransformJob, progress: TransformProgress) -> TransformOutcome:
        """Wait for the GPU, transform, and close `progress` (final 100.0 on success) before the next job starts."""
        try:
            outcome = await self._queued(job, progress)
        except BaseException:
            await progress.finish(success=False)
            raise
        return outcome

    async def _queued(self, job: TransformJob, progress: TransformProgress) -> TransformOutcome:
        ahead = self._waiting + self._active
        self._waiting += 1
        try:
            if self._lock.locked():
                await progress.queue_status(
                    "queued",
                    f"Waiting for the GPU: {ahead} transform{'s' if ahead != 1 else ''} ahead of you.",
                    position=ahead,
                    total_queued=ahead + 1,
                    estimated_seconds=ahead * self.estimate(job),
                )
            await self._lock.acquire()
        finally:
            self._waiting -= 1
        self._active += 1
        try:
            outcome = await self._run_locked(job, progress)
            await progress.finish(success=True)
            return outcome
        finally:
            self._active -= 1
            self._lock.release()

    @contextlib.asynccontextmanager
    async def _gpu_slot(self, job: TransformJob, progress: TransformProgress) -> AsyncIterator[str]:
        if job.lease_id and self.queue is not None:
            await self._check_task_lease(job)
            log.info("transform %s runs under gary's lease %s (fencing %s)", job.session_id, job.lease_id, job.fencing_token)
            yield "task"
            return
        if self.queue is None:  # solo: nothing to check a named lease with, and no other service to share with
            yield "local"
            return
        notice = asyncio.create_task(self._lease_notice(job, progress))
        try:
            async with self.queue.lease(
                self.settings.terry_model,
                lane="transform",
                owner=f"terry:{job.session_id}",
                vram_mb=self.settings.terry_vram_mb,
                wait_timeout=self.settings.terry_lease_wait_seconds,
                client_key=job.client_key,
            ):
                notice.cancel()
                yield "gateway"
        finally:
            notice.cancel()

    async def _check_task_lease(self, job: TransformJob) -> None:
        """Run under a caller-named lease only if the gateway says it is granted now with that fencing token: a
        made-up or finished lease_id would otherwise skip the queue (and run beside the task that holds the GPU)."""
        token = job.fencing_token
        if isinstance(token, str) and token.isdigit():
            token = int(token)
        lease_id = job.lease_id or ""
        if not isinstance(token, int) or not TASK_LEASE.fullmatch(lease_id):
            raise GaryError(ErrorCode.BAD_REQUEST, "lease_id must name a transform lease (transform:<session>) and "
                            "come with its integer fencing_token", http_status=409)
        try:
            await self.queue.check_lease(lease_id, token)
        except GaryError as err:
            if err.http_status not in (404, 409):
                raise  # gateway unreachable or busy: its own 503/429
            raise GaryError(ErrorCode.BAD_REQUEST, f"lease {lease_id} is not granted with fencing token {token}; "
                            "not running under it", http_status=409, details={"reason": "lease_not_held"}) from err

    async def _lease_notice(self, job: TransformJob, progress: TransformProgress) -> None:
        """Tell the room why nothing moves when the gateway makes us wait for GPU memory."""
        await asyncio.sleep(LEASE_NOTICE_AFTER_S)
        await progress.queue_status(
            "queued",
            "Waiting for GPU memory (shared with the other services)...",
            position=1,
            total_queued=1 + self._waiting,
            estimated_seconds=self.estimate(job),
        )

    async def _run_locked(self, job: TransformJob, progress: TransformProgress) -> TransformOutcome:
        must_load = self.host.needs_load
        if must_load:
            load_estimate = self.host.load_seconds or DEFAULT_ESTIMATE_S
            await progress.queue_status(
                "warming",
                "Loading MelodyFlow model...",
                position=0,
                total_queued=1 + self._waiting,
                estimated_seconds=load_estimate + self.estimate(job),
            )
        engine = await self.host.acquire()
        seed = job.seed if job.seed is not None else secrets.randbelow(2**32)
        audio = job.audio
        if engine.sample_rate != job.rate:  # the route guessed the rate before the (lazy) load; trust the engine
            audio = resample(audio, job.rate, engine.sample_rate)
        try:
            async with self._gpu_slot(job, progress) as lease_kind:
                started = time.monotonic()
                try:
                    out = await self.host.call(
                        engine.transform,
                        audio,
                        job.prompt,
                        flowstep=job.flowstep,
                        solver=job.solver,
                        steps=job.steps,
                        seed=seed,
                        progress=progress.report,
                    )
                except GaryError:
                    raise
                except Exception as exc:
                    if is_oom(exc):
                        await self.host.call(_empty_cache)
                        raise oom_error() from exc
                    raise
        finally:
            self.host.release()
        elapsed = time.monotonic() - started
        TERRY_TRANSFORM_SECONDS.observe(elapsed)
        self._learn(job, elapsed)
        log.info(
            "transform %s: %.1f s of audio, %s/%d steps, flowstep %.3f, seed %d, %.2f s (%s lease)",
            job.session_id, job.seconds, job.solver, job.steps, job.flowstep, seed, elapsed, lease_kind,
        )
        return TransformOutcome(
            audio=out, sample_rate=engine.sample_rate, seed=seed, seconds=elapsed, loaded_model=must_load, lease=lease_kind
        )


def _empty_cache() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
