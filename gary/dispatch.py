"""Where jobs wait for the GPU: the queue gateway (callback style), or gary's own FIFO when QUEUE_URL is empty.

Gateway: `submit` enqueues; the gateway later POSTs `ready` to /task_notification and `JobRunner.start_ready` runs
the job. Solo: one FIFO per lane (generation, transform) in this process, one job at a time each, with the same
`queue_status` messages the gateway's callbacks produce.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from garycommon.errors import GaryError
from garycommon.residency import ResidentLease, gateway_client
from garycommon.settings import Settings

from .jobs import GENERATION_LANE, TRANSFORM_LANE, Job
from .notifications import Notifier, queue_status_payload

log = logging.getLogger(__name__)

RunJob = Callable[[Job], Awaitable[None]]
ALIVE_STATUSES = frozenset({"queued", "ready", "processing", "warming", "granted", "running"})
DEFAULT_JOB_SECONDS = 30.0  # solo mode's wait estimate before any job has been timed (the original's default)
RESIDENT_LANE = "gary"
RESIDENT_WAIT_SECONDS = 2.0  # not granted quickly -> unload instead of waiting while holding the task's lease


class Dispatcher(Protocol):
    async def start(self, run: RunJob) -> None: ...
    async def submit(self, job: Job) -> None: ...
    async def report(self, lane: str, session_id: str, status: str, *, error: str | None = None,
                     fencing_token: int | str | None = None) -> None: ...
    async def heartbeat(self, job: Job) -> None: ...
    async def queued_alive(self, job: Job) -> bool: ...
    async def live_status(self, job: Job) -> dict[str, Any] | None: ...
    def gpu_slot(self, model: str, vram_mb: int | None) -> contextlib.AbstractAsyncContextManager[Any]: ...
    def resident_lease(self, model: str, vram_mb: int | None) -> ResidentLease | None: ...
    async def aclose(self) -> None: ...


class GatewayDispatcher:
    def __init__(self, settings: Settings, vram_for: Callable[[str], int | None]) -> None:
        self.settings = settings
        self.vram_for = vram_for
        # gary's own credential, never a user key: user limits count the end client it forwards as client_key
        client = gateway_client(settings)
        if client is None:
            raise ValueError("GatewayDispatcher needs QUEUE_URL")
        self.client = client

    async def start(self, run: RunJob) -> None:
        """Nothing to run here: `ready` callbacks start jobs."""

    async def submit(self, job: Job) -> None:
        if job.lane == TRANSFORM_LANE:
            model, vram = self.settings.terry_model, self.settings.terry_vram_mb
        else:
            model = job.params["model_name"]
            vram = await asyncio.to_thread(self.vram_for, model)
        await self.client.enqueue(job.lane, job.session_id, job.type, {"job_id": job.job_id, **job.params},
                                  callback_url=self.settings.gary_url, model=model, vram_mb=vram,
                                  client_key=job.client_key, job_id=job.job_id)

    async def report(self, lane: str, session_id: str, status: str, *, error: str | None = None,
                     fencing_token: int | str | None = None) -> None:
        token = fencing_token if isinstance(fencing_token, int) else None
        await self.client.set_status(lane, session_id, status, error=error, fencing_token=token)

    async def heartbeat(self, job: Job) -> None:
        token = job.fencing_token if isinstance(job.fencing_token, int) else None
        await self.client.heartbeat(job.lane, job.session_id, fencing_token=token)

    async def queued_alive(self, job: Job) -> bool:
        """A job gary thinks is queued still blocks its session only if the gateway still has it."""
        try:
            task = await self.client.task(job.lane, job.session_id)
        except GaryError:
            return True  # gateway unreachable: keep refusing duplicates rather than double-queue
        if task is None or task.get("job_id", job.job_id) != job.job_id:
            return False  # the session's task now belongs to another job (or is gone)
        return str(task.get("status", "queued")) in ALIVE_STATUSES

    async def live_status(self, job: Job) -> dict[str, Any] | None:
        try:
            task = await asyncio.wait_for(self.client.task(job.lane, job.session_id), timeout=0.5)
        except (GaryError, TimeoutError):
            return None
        if not task:
            return None
        queue = task.get("queue_status") if isinstance(task.get("queue_status"), dict) else task
        payload = queue_status_payload(job.session_id, str(task.get("status", "queued")), queue)
        payload["source"] = "go_service_direct"
        return payload

    def gpu_slot(self, model: str, vram_mb: int | None) -> contextlib.AbstractAsyncContextManager[Any]:
        """A VRAM lease for work outside a task (warm-up), so it never overlaps what the gateway scheduled."""
        return self.client.lease(model, lane=GENERATION_LANE, owner="gary-warmup", vram_mb=vram_mb)

    def resident_lease(self, model: str, vram_mb: int | None) -> ResidentLease | None:
        """Accounts for weights kept loaded between jobs, on gary's own uncapped lane (never behind a task)."""
        return ResidentLease(lambda: self.client.lease(
            model, lane=RESIDENT_LANE, owner=f"gary:resident:{model}", vram_mb=vram_mb, resident=True,
            wait_timeout=RESIDENT_WAIT_SECONDS))

    async def aclose(self) -> None:
        await self.client.aclose()


class SoloDispatcher:
    """No gateway: a FIFO per lane, started in order; transforms one at a time, generations up to `generation_slots`
    at once (they share gary's one GPU thread, batched into one engine call)."""

    def __init__(self, notifier: Notifier, *, generation_slots: int = 1) -> None:
        self.notifier = notifier
        # Generations may run `generation_slots` at once: they still share the one GPU thread, batched together.
        self._slots = {GENERATION_LANE: max(1, generation_slots), TRANSFORM_LANE: 1}
        self._queues: dict[str, asyncio.Queue[Job]] = {lane: asyncio.Queue() for lane in self._slots}
        self._waiting: dict[str, list[str]] = {lane: [] for lane in self._slots}
        self._running: dict[str, set[str]] = {lane: set() for lane in self._slots}
        self._seconds: dict[str, float] = {lane: DEFAULT_JOB_SECONDS for lane in self._slots}  # moving average
        self._workers: list[asyncio.Task[None]] = []

    async def start(self, run: RunJob) -> None:
        for lane, slots in self._slots.items():
            for n in range(slots):
                self._workers.append(asyncio.create_task(self._worker(lane, run), name=f"gary-solo-{lane}-{n}"))

    async def submit(self, job: Job) -> None:
        lane = job.lane
        self._waiting[lane].append(job.job_id)
        await self._queues[lane].put(job)
        if len(self._running[lane]) + len(self._waiting[lane]) > self._slots[lane]:
            position = len(self._waiting[lane])
            wait = self._seconds[lane] * math.ceil(position / self._slots[lane])
            await self.notifier.queue_status(queue_status_payload(job.session_id, "queued", {
                "queued_tasks": position, "active_tasks": len(self._running[lane]), "position": position,
                "estimated_wait_seconds": round(wait, 1)}), job.requester)

    async def _worker(self, lane: str, run: RunJob) -> None:
        queue = self._queues[lane]
        while True:
            job = await queue.get()
            self._waiting[lane].remove(job.job_id)
            self._running[lane].add(job.job_id)
            try:
                await self.notifier.queue_status(queue_status_payload(job.session_id, "ready", {
                    "queued_tasks": 0, "active_tasks": len(self._running[lane]), "estimated_wait_seconds": 0}),
                    job.requester)
                started = time.monotonic()
                await run(job)
                self._seconds[lane] += 0.3 * (time.monotonic() - started - self._seconds[lane])
            except Exception:
                log.exception("solo job %s crashed", job.job_id)
            finally:
                self._running[lane].discard(job.job_id)

    async def report(self, lane: str, session_id: str, status: str, *, error: str | None = None,
                     fencing_token: int | str | None = None) -> None:
        """No gateway to tell."""

    async def heartbeat(self, job: Job) -> None:
        """No lease to keep alive."""

    async def queued_alive(self, job: Job) -> bool:
        return job.job_id in self._waiting[job.lane] or job.job_id in self._running[job.lane]

    async def live_status(self, job: Job) -> dict[str, Any] | None:
        return None

    def gpu_slot(self, model: str, vram_mb: int | None) -> contextlib.AbstractAsyncContextManager[Any]:
        """The GPU worker thread already serialises everything in solo mode."""
        return contextlib.nullcontext()

    def resident_lease(self, model: str, vram_mb: int | None) -> ResidentLease | None:
        """No gateway to account VRAM with: models simply stay loaded (the engine's LRU bounds them)."""
        return None

    async def aclose(self) -> None:
        for task in self._workers:
            task.cancel()
        for task in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
