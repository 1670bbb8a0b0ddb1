"""Runs one job once it may use the GPU: state changes, heartbeats, the work itself, results and reports.

Every outcome is reported to the dispatcher (gateway) — including failures before the work starts (missing session
or audio), which the original never reported, leaving the gateway slot occupied. A failing status report after a
successful emit is only logged, never turned into a spurious `error`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from garycommon import rediskeys
from garycommon.errors import ErrorCode, GaryError
from garycommon.hub import download_progress
from garycommon.metrics import GARY_GENERATION_SECONDS, GARY_JOBS, GARY_QUEUE_WAIT_SECONDS
from garycommon.progress import StatusStore
from garycommon.residency import ResidentLease
from garycommon.settings import Settings

from . import pipeline
from .batcher import Company, GenerationBatcher
from .dispatch import Dispatcher
from .engine_protocol import GenerationEngine
from .jobs import ACTIVE_STATES, GENERATION_LANE, RUNNING_STATES, TRANSFORM_LANE, Job, JobStore
from .notifications import Notifier, queue_status_payload
from .sessions import SessionStore
from .throttle import ProgressThrottle
from .transform import TerryClient

log = logging.getLogger(__name__)
WARMING_GRACE_SECONDS = 2.0
WARMING_TICK_SECONDS = 2.0
PROCESS_ID = f"{socket.gethostname()}:{os.getpid()}"

INPUT_SLOT = {
    "process_audio": "initial_audio",
    "continue_music": "last_processed_audio",
    "retry_music": "last_input_audio",
    "transform_audio": "transform_input_audio",
}


@dataclass
class Output:
    wav: bytes
    seed: int | None
    metadata: dict[str, Any]


class JobRunner:
    def __init__(self, settings: Settings, store: SessionStore, jobs: JobStore, status: StatusStore, notifier: Notifier,
                 throttle: ProgressThrottle, dispatcher: Dispatcher, terry: TerryClient,
                 engine_factory: Callable[[], GenerationEngine]) -> None:
        self.settings = settings
        self.store = store
        self.jobs = jobs
        self.status = status
        self.notifier = notifier
        self.throttle = throttle
        self.dispatcher = dispatcher
        self.terry = terry
        self._engine_factory = engine_factory
        self._engine: GenerationEngine | None = None
        self._engine_lock = threading.Lock()
        self.company = Company()  # generations on their way to the GPU worker (Operations notes submissions)
        self.batcher = GenerationBatcher(self.engine, settings.gary_max_batch, settings.gary_partial_seconds,
                                         company=self.company)
        # One GPU worker thread: MusicGen never runs on the event loop, and never twice at once in this process.
        self.gpu = self.batcher.worker
        self._tasks: set[asyncio.Task[Any]] = set()
        self.warmup_state: dict[str, dict[str, Any]] = {}
        self._running: dict[str, Job] = {}  # jobs running in this process, by id
        self._warm_leases: dict[str, ResidentLease] = {}  # model -> its resident lease (held)

    # --- engine -----------------------------------------------------------------------------------------------
    def engine(self) -> GenerationEngine:
        """Created on first use, off the event loop (importing/allocating CUDA state is slow)."""
        with self._engine_lock:
            if self._engine is None:
                self._engine = self._engine_factory()
            return self._engine

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- entry points -------------------------------------------------------------------------------------------
    async def start_ready(self, session_id: str, job_type: str, *, lease_id: str | None,
                          fencing_token: int | str | None, job_id: str | None = None) -> str:
        """A `ready` callback: start the session's pending job exactly once; anything else is reported failed.

        `job_id` (echoed by the gateway) pins the grant to one job: a session runs many jobs under one task id, and a
        late grant for an earlier one must never start (or be mistaken for) the current one."""
        job = await self.jobs.current(session_id)
        lane = TRANSFORM_LANE if job_type == "transform_audio" else GENERATION_LANE
        if job is not None and job_id is not None and job.job_id != job_id:
            job = None
        if job is None or job.type != job_type or job.state not in ACTIVE_STATES:
            await self._report(lane, session_id, "failed", error="gary has no pending job for this task",
                               fencing_token=fencing_token)
            return "no pending job for this task; reported failed"
        if not await self.jobs.claim(job.job_id):
            running = self._running.get(job.job_id)
            if running is not None:  # the gateway re-granted (it thought the lease lost): adopt the new one
                running.lease_id, running.fencing_token = lease_id, fencing_token
                return "job already running here; lease updated"
            if job.state != "queued" and job.active:
                return "job already started"
            log.warning("job %s was claimed but its runner is gone; running it again", job.job_id)
        job.lease_id = lease_id
        job.fencing_token = fencing_token
        self._running[job.job_id] = job  # now, not when the task first runs: a second grant meanwhile only adopts
        self.spawn(self.run(job))
        return "job started"

    async def run(self, job: Job) -> None:
        sid = job.session_id
        heartbeat: asyncio.Task[None] | None = None
        warming: asyncio.Task[None] | None = None
        self._running[job.job_id] = job
        try:
            await self.jobs.redis.sadd(rediskeys.running_jobs(), job.job_id)
            GARY_QUEUE_WAIT_SECONDS.observe(max(0.0, time.time() - job.created_at), type=job.type)
            await self.jobs.update(job, state="warming", heartbeat_at=time.time(), ran_on=PROCESS_ID)
            await self.status.set_status(sid, "warming", job_id=job.job_id)
            await self.status.set_queue_status(sid, self._warming_status(job))
            await self._report(job.lane, sid, "processing", fencing_token=job.fencing_token)
            if job.lane == GENERATION_LANE:
                await self.throttle.mark_active(sid)
                warming = asyncio.create_task(self._tell_while_warming(job))
            heartbeat = asyncio.create_task(self._heartbeat(job))
            with GARY_GENERATION_SECONDS.time(type=job.type):
                output = await (self._transform(job) if job.lane == TRANSFORM_LANE else self._generate(job))
            await self._succeed(job, output)
        except asyncio.CancelledError:
            await self._fail(job, GaryError(ErrorCode.SERVICE_UNAVAILABLE, "gary is shutting down; please retry"))
            raise
        except Exception as exc:
            if not isinstance(exc, GaryError):
                log.exception("job %s (%s) crashed", job.job_id, job.type)
            err = exc if isinstance(exc, GaryError) else GaryError(ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}")
            await self._fail(job, err)
        finally:
            # the job's helpers stop first, before anything here awaits: a cancellation landing on one of the awaits
            # below must never leave a heartbeat running for a job that is over
            if heartbeat is not None:
                heartbeat.cancel()
            if warming is not None:
                warming.cancel()
            self._running.pop(job.job_id, None)
            with contextlib.suppress(Exception):
                await self.jobs.redis.srem(rediskeys.running_jobs(), job.job_id)
            if job.lane == GENERATION_LANE:
                await self.throttle.mark_done(sid)

    async def recover_interrupted(self) -> list[str]:
        """At start: jobs a dead gary process on this host was running are run again here at once, under the lease
        they held (the gateway keeps it until its TTL; if it re-grants meanwhile, `start_ready` adopts the new one).
        Jobs of other hosts are left to their own restart or to the gateway's lease expiry."""
        host = socket.gethostname()
        resumed: list[str] = []
        for job_id in await self.jobs.redis.smembers(rediskeys.running_jobs()):
            job = await self.jobs.get(job_id)
            if job is None or job.state not in RUNNING_STATES:
                await self.jobs.redis.srem(rediskeys.running_jobs(), job_id)
                continue
            owner_host, _, pid = (job.ran_on or "").rpartition(":")
            if owner_host != host or not pid.isdigit() or int(pid) == os.getpid() or _alive(int(pid)):
                continue
            if not await self.jobs.redis.set(rediskeys.job_recovery(job_id), PROCESS_ID, nx=True, ex=rediskeys.JOB_TTL):
                continue
            log.warning("job %s (%s, session %s) was interrupted by the exit of gary process %s; running it again",
                        job.job_id, job.type, job.session_id, job.ran_on)
            self.spawn(self.run(job))
            resumed.append(job.job_id)
        return resumed

    async def fail_queued(self, job: Job, message: str) -> None:
        """The gateway dropped a task that never started (expired, cancelled): tell the client instead of hanging."""
        if await self.jobs.claim(job.job_id):
            await self._fail(job, GaryError(ErrorCode.QUEUE_UNAVAILABLE, message))

    def start_warmup(self, models: tuple[str, ...]) -> dict[str, dict[str, Any]]:
        for model in models:
            if self.warmup_state.get(model, {}).get("status") not in ("queued", "loading"):
                self.warmup_state[model] = {"status": "queued", "description": "preload into the GPU worker"}
                self.spawn(self._warm(model))
        return dict(self.warmup_state)

    async def _warm(self, model: str) -> None:
        try:
            vram = await asyncio.to_thread(lambda: self.engine().vram_mb(model))
            async with self.dispatcher.gpu_slot(model, vram):
                self.warmup_state[model] = {"status": "loading"}
                started = time.monotonic()
                await self.gpu.call(lambda: self.engine().preload(model))
                await self._keep_warm()  # (with a gateway: a resident lease for it, else it is unloaded again)
            self.warmup_state[model] = {"status": "ready", "message": f"loaded in {time.monotonic() - started:.1f} s"}
        except Exception as exc:
            log.warning("warm-up of %s failed: %s", model, exc)
            self.warmup_state[model] = {"status": "failed", "error": str(exc)}

    # --- the work ---------------------------------------------------------------------------------------------
    async def _input(self, job: Job) -> bytes:
        slot = INPUT_SLOT[job.type]
        raw = await self.store.get_audio(job.session_id, slot)  # type: ignore[arg-type]
        if raw is None:
            raise GaryError(ErrorCode.NOT_FOUND, f"session {job.session_id} has no {slot} (expired or deleted)")
        return raw

    async def _generate(self, job: Job) -> Output:
        self.company.preparing(job.job_id)  # the GPU worker lets a first request wait briefly for these
        try:
            raw = await self._input(job)
            prepared = await asyncio.to_thread(pipeline.prepare, job.type, job.params, raw,
                                               max_bytes=self.settings.max_audio_bytes)
        finally:
            self.company.prepared()
        loop = asyncio.get_running_loop()
        progress = self._progress_callback(job, loop)
        partial = self._partial_callback(job, prepared, loop) if job.params.get("stream_partials") else None
        result, elapsed, batch_size = await self.batcher.generate(prepared.request, progress, partial)
        out = await asyncio.to_thread(pipeline.finish, prepared, result, elapsed)
        if job.type == "continue_music":
            await self.store.put_audio(job.session_id, "last_input_audio", raw)
        await self.store.put_audio(job.session_id, "last_processed_audio", out.wav)
        return Output(out.wav, out.seed, {
            "model_name": job.params["model_name"], "prompt_duration": job.params["prompt_duration"],
            "seed": out.seed, "sample_rate": out.sample_rate, "duration": round(out.seconds, 4),
            "generation_time": round(out.generation_time, 3), "batch_size": batch_size,
        })

    async def _transform(self, job: Job) -> Output:
        raw = await self._input(job)
        wav, meta = await self.terry.transform(job.session_id, raw, job.params, lease_id=job.lease_id,
                                               fencing_token=job.fencing_token)
        await self.store.put_audio(job.session_id, "last_input_audio", raw)
        await self.store.put_audio(job.session_id, "last_processed_audio", wav)
        seed = meta.get("seed") if isinstance(meta.get("seed"), int) else None
        return Output(wav, seed, {"variation": job.params["variation"], **meta})

    # --- outcomes ---------------------------------------------------------------------------------------------
    async def _succeed(self, job: Job, output: Output) -> None:
        sid = job.session_id
        audio_b64 = await asyncio.to_thread(lambda: base64.b64encode(output.wav).decode("ascii"))
        GARY_JOBS.inc(type=job.type, outcome="completed")
        await self.jobs.update(job, state="completed", error=None, error_code=None, result=output.metadata,
                               seed=output.seed if output.seed is not None else job.seed)
        await self.status.set_status(sid, "completed", job_id=job.job_id)
        await self.status.set_progress(sid, 100)
        if job.lane == GENERATION_LANE:
            await self._keep_warm()  # while the task's lease still covers the loaded weights
        # The gateway hears before the client: a musician's next button press enqueues the session's next task at
        # once, and must find this one finished rather than still holding the session's task id.
        await self._report(job.lane, sid, "completed", fencing_token=job.fencing_token)
        await self.notifier.emit("progress_update", {"progress": 100, "session_id": sid}, sid, job.requester)
        await self.notifier.emit(job.result_event, self.result_payload(job, audio_b64, output.metadata), sid,
                                 job.requester)

    def result_payload(self, job: Job, audio_b64: str, metadata: dict[str, Any]) -> dict[str, Any]:
        payload: dict[str, Any] = {"audio_data": audio_b64, "session_id": job.session_id, "job_id": job.job_id,
                                   "metadata": {"demo": self.settings.demo_models, **metadata}}
        if job.type == "transform_audio":
            payload["variation"] = job.params["variation"]
        if job.seed is not None:
            payload["seed"] = job.seed
        return payload

    async def _fail(self, job: Job, err: GaryError) -> None:
        sid = job.session_id
        log.warning("job %s (%s, session %s) failed: %s", job.job_id, job.type, sid, err.message)
        GARY_JOBS.inc(type=job.type, outcome="failed")
        try:
            await self.jobs.update(job, state="failed", error=err.message, error_code=str(err.code))
            await self.status.set_status(sid, "failed", error=err.message, job_id=job.job_id)
        except Exception:
            log.exception("could not record failure of job %s", job.job_id)
        await self._report(job.lane, sid, "failed", error=err.message, fencing_token=job.fencing_token)
        await self.notifier.error(err, sid, job.requester)

    async def _report(self, lane: str, session_id: str, status: str, *, error: str | None = None,
                      fencing_token: int | str | None = None) -> None:
        try:
            await self.dispatcher.report(lane, session_id, status, error=error[:1000] if error else None,
                                         fencing_token=fencing_token)
        except Exception as exc:
            log.warning("could not report %s for %s to the queue: %s", status, session_id, exc)

    async def _keep_warm(self) -> None:
        """With a gateway, every model the engine keeps loaded between jobs holds a resident lease (so other services'
        leases never overcommit the card); a model whose lease is refused, lost or no longer needed is unloaded."""
        # Engine calls go to a plain thread, not the GPU worker: that may be busy with the next job for a while, and
        # the task's lease must not be held that long. (The engine's own lock makes these calls safe.)
        try:
            engine = await asyncio.to_thread(self.engine)
            resident = set(await asyncio.to_thread(engine.resident))
            for model, lease in list(self._warm_leases.items()):
                if model not in resident or lease.lost:
                    del self._warm_leases[model]
                    await lease.release()
                    if model in resident:
                        await asyncio.to_thread(engine.unload, model)
                        resident.discard(model)
            for model in resident - set(self._warm_leases):
                lease = self.dispatcher.resident_lease(model, await asyncio.to_thread(engine.vram_mb, model))
                if lease is None:
                    continue
                try:
                    await lease.acquire()
                except GaryError as exc:
                    log.info("no resident lease for %s (%s): unloading it", model, exc.message)
                    await asyncio.to_thread(engine.unload, model)
                else:
                    self._warm_leases[model] = lease
        except Exception:
            log.exception("keeping models warm failed")

    # --- liveness and progress ----------------------------------------------------------------------------------
    async def _heartbeat(self, job: Job) -> None:
        while True:
            await asyncio.sleep(self.settings.gary_heartbeat_seconds)
            try:
                await self.jobs.update(job, heartbeat_at=time.time())
                if job.lane == GENERATION_LANE:
                    await self.throttle.mark_active(job.session_id)
                await self.dispatcher.heartbeat(job)
            except Exception as exc:
                log.warning("heartbeat of job %s failed: %s", job.job_id, exc)

    async def _tell_while_warming(self, job: Job) -> None:
        """While a generation waits for its model (a hub download, a load into memory) the client hears why, every
        few seconds, instead of silence until the first progress tick; pollers read the same payload."""
        await asyncio.sleep(WARMING_GRACE_SECONDS)  # a resident model starts at once: nothing to say
        last_done, last_at = 0, time.monotonic()
        while job.state == "warming":
            message, eta = f"loading {job.params.get('model_name')} into memory...", 0.0
            downloads = download_progress()
            if downloads:
                done = sum(d["done_bytes"] for d in downloads.values())
                total = sum(d["total_bytes"] for d in downloads.values())
                rate = max(0.0, (done - last_done) / max(1e-3, time.monotonic() - last_at))
                last_done, last_at = done, time.monotonic()
                name = ", ".join(sorted(downloads))
                message = f"downloading {name} {done / 1e9:.1f}/{total / 1e9:.1f} GB"
                eta = (total - done) / rate if rate > 0 and total > done else 0.0
            payload = queue_status_payload(job.session_id, "warming", {
                "position": 0, "queued_tasks": 0, "active_tasks": 1, "estimated_wait_seconds": round(eta, 1)},
                message=message)
            await self.notifier.queue_status(payload, job.requester)
            await asyncio.sleep(WARMING_TICK_SECONDS)

    def _warming_status(self, job: Job) -> dict[str, Any]:
        what = job.params.get("model_name") or "MelodyFlow model"
        return {"status": "warming", "message": f"loading {what} (first run / hub download)", "position": 0,
                "total_queued": 0, "estimated_time": None, "estimated_seconds": 0, "session_id": job.session_id,
                "source": "gary"}

    def _progress_callback(self, job: Job, loop: asyncio.AbstractEventLoop) -> Callable[[int, int], None]:
        """Called from the GPU thread; hops to the loop only when the integer percent changes (never 100 early)."""
        last = [-1]

        def callback(step: int, total: int) -> None:
            percent = min(99, int(step * 100 / max(1, total)))
            if percent <= last[0]:
                return
            last[0] = percent
            loop.call_soon_threadsafe(self.spawn, self._progress(job, percent))

        return callback

    def _partial_callback(self, job: Job, prepared: pipeline.Prepared,
                          loop: asyncio.AbstractEventLoop) -> Callable[[Any, int], None]:
        """Called from the GPU thread with the audio so far; only the newest one waits to be sent (a slow client or
        encoder skips intermediate partials rather than queueing them)."""
        lock = threading.Lock()
        latest: list[tuple[Any, int] | None] = [None]
        sending = [False]

        async def send() -> None:
            while True:
                with lock:
                    item, latest[0] = latest[0], None
                    if item is None:
                        sending[0] = False
                        return
                with contextlib.suppress(Exception):
                    await self._send_partial(job, prepared, *item)

        def callback(audio: Any, rate: int) -> None:
            with lock:
                latest[0] = (audio, rate)
                if sending[0]:
                    return
                sending[0] = True
            loop.call_soon_threadsafe(self.spawn, send())

        return callback

    async def _send_partial(self, job: Job, prepared: pipeline.Prepared, audio: Any, rate: int) -> None:
        if job.state not in RUNNING_STATES:
            return  # the result is out already
        audio_b64 = await asyncio.to_thread(
            lambda: base64.b64encode(pipeline.partial_wav(prepared, audio, rate)).decode("ascii"))
        seconds = round(audio.shape[-1] / rate, 3)
        await self.status.set_partial(job.job_id, audio_b64)
        if job.state not in RUNNING_STATES:
            return  # the result went out while this piece was encoded: a partial after it would confuse a client
        await self.notifier.emit("partial_audio", {"session_id": job.session_id, "job_id": job.job_id,
                                                   "audio_data": audio_b64, "generated_seconds": seconds,
                                                   "final": False}, job.session_id, job.requester)

    async def _progress(self, job: Job, percent: int) -> None:
        sid = job.session_id
        with contextlib.suppress(Exception):
            if percent > 0 and job.state == "warming":
                await self.jobs.update(job, state="processing")
                await self.status.set_status(sid, "processing", job_id=job.job_id)
                await self.status.set_queue_status(sid, {**self._warming_status(job), "status": "processing",
                                                         "message": "generating..."})
            if job.state not in ("warming", "processing"):
                return  # a late tick after the result: pollers and clients already have 100
            await self.status.set_progress(sid, percent)
            if await self.throttle.allow(sid) and job.state == "processing":
                await self.notifier.emit("progress_update", {"progress": percent, "session_id": sid}, sid,
                                         job.requester)

    async def aclose(self) -> None:
        for lease in self._warm_leases.values():
            with contextlib.suppress(Exception):
                await lease.release()
        self._warm_leases.clear()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.gpu.stop(timeout=0)  # what waits is cancelled; a running engine call is not waited for


def _alive(pid: int) -> bool:
    """Whether a process of this host still has `pid` (one owned by another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True
