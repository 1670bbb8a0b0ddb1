"""What each client request does, shared by the Socket.IO events and the JUCE HTTP routes.

Both transports call these methods, so parameter stickiness, validation and storage are the same on both paths
(the original's HTTP continue ignored new parameters and HTTP retry wrote null ones). Rules:

* `model_name` and `prompt_duration` are sticky: missing values come from the session, and what a job uses is saved.
* `top_k`, `temperature`, `cfg_coef`, `description` are per request (defaults 250 / 1.0 / 3.0 / model default).
* Everything is validated (and audio decoded) before anything is stored; a session with an active job refuses new
  jobs and undo; the room is joined (`on_accepted`) before the job is queued, so no `queue_status` is missed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from garycommon import rediskeys
from garycommon.audio import b64decode_audio
from garycommon.errors import ErrorCode, GaryError
from garycommon.progress import StatusStore
from garycommon.settings import Settings

from . import catalog, pipeline
from .batcher import Company
from .dispatch import Dispatcher
from .jobs import GENERATION_LANE, TRANSFORM_LANE, Job, JobStore, JobType, new_job
from .payloads import (
    MAX_AUDIO_TEXT,
    ChunkRequest,
    ContinueRequest,
    CropRequest,
    GenerationParams,
    ProcessAudioRequest,
    RestoreRequest,
    RetryRequest,
    TransformRequest,
)
from .sessions import SessionStore

OnAccepted = Callable[[str], Awaitable[None]]
DEFAULT_TOP_K = 250
DEFAULT_TEMPERATURE = 1.0
DEFAULT_CFG = 3.0
QUEUED_GRACE_SECONDS = 10.0


@dataclass(frozen=True)
class Caller:
    """Who asks: the Socket.IO connection (results also go there) and a fairness key for the queue (per client)."""

    sid: str | None = None
    client_key: str | None = None


NO_CALLER = Caller()


def client_key(address: str | None) -> str | None:
    """A stable, privacy-preserving id for one client address (the gateway round-robins between such keys)."""
    return hashlib.sha256(address.encode()).hexdigest()[:16] if address else None


@dataclass
class Accepted:
    session_id: str
    job: Job


class Operations:
    def __init__(self, settings: Settings, redis: aioredis.Redis, store: SessionStore, jobs: JobStore,
                 status: StatusStore, dispatcher: Dispatcher, company: Company | None = None) -> None:
        """`company`: told of every generation queued here, so the GPU worker can gather a burst into one call."""
        self.settings = settings
        self.company = company
        self.redis = redis
        self.store = store
        self.jobs = jobs
        self.status = status
        self.dispatcher = dispatcher
        self._store_chunk = redis.register_script(_STORE_CHUNK)

    # --- shared checks ------------------------------------------------------------------------------------------
    async def decode_checked(self, audio_text: str) -> bytes:
        """Base64 -> file bytes, proven decodable and non-empty before anything is stored."""
        raw = b64decode_audio(audio_text, max_bytes=self.settings.max_audio_bytes)
        await asyncio.to_thread(pipeline.decode_input, raw, self.settings.max_audio_bytes)
        return raw

    def generation_params(self, req: GenerationParams, model_name: str, prompt_duration: int) -> dict[str, Any]:
        catalog.check_model(model_name, self.settings)
        limit = self.settings.gary_output_seconds
        if prompt_duration >= limit:
            raise GaryError(ErrorCode.VALIDATION_ERROR,
                            f"prompt_duration must be shorter than the {limit:g} s output", http_status=400)
        description = (req.description or "").strip() or None
        return {
            "model_name": model_name,
            "prompt_duration": int(prompt_duration),
            "top_k": req.top_k if req.top_k is not None else DEFAULT_TOP_K,
            "temperature": req.temperature if req.temperature is not None else DEFAULT_TEMPERATURE,
            "cfg_coef": req.cfg_coef if req.cfg_coef is not None else DEFAULT_CFG,
            "description": description,
            "seed": _resolve_seed(req.seed),
            "output_seconds": limit,
            "stream_partials": bool(req.stream_partials),
        }

    @staticmethod
    def session_fields(params: dict[str, Any]) -> dict[str, Any]:
        return {
            "model_name": params["model_name"],
            "prompt_duration": params["prompt_duration"],
            "parameters": {k: params[k] for k in ("top_k", "temperature", "cfg_coef")},
            "description": params["description"],
        }

    async def is_active(self, job: Job | None) -> bool:
        """Queued or running, and not abandoned (a queued job the queue forgot, a runner that stopped heartbeating)."""
        if job is None or not job.active:
            return False
        if job.state != "queued" or time.time() - job.created_at < QUEUED_GRACE_SECONDS:
            return True  # (a just-created job may not have reached the queue yet)
        return await self.dispatcher.queued_alive(job)

    async def active_job(self, session_id: str) -> Job | None:
        job = await self.jobs.current(session_id)
        return job if await self.is_active(job) else None

    async def ensure_idle(self, session_id: str) -> None:
        job = await self.active_job(session_id)
        if job is not None:
            what = "Transform" if job.lane == TRANSFORM_LANE else "Generation"
            raise GaryError(ErrorCode.IN_PROGRESS, f"{what} already in progress", http_status=400)

    @contextlib.asynccontextmanager
    async def session_lock(self, session_id: str) -> AsyncIterator[None]:
        if not await self.jobs.lock_submission(session_id):
            raise GaryError(ErrorCode.IN_PROGRESS, "Another request for this session is being handled",
                            http_status=400)
        try:
            yield
        finally:
            await self.jobs.unlock_submission(session_id)

    async def require_session(self, session_id: str) -> dict[str, Any]:
        session = await self.store.get(session_id)
        if session is None:
            raise GaryError(ErrorCode.SESSION_NOT_FOUND, "Session not found")
        return session

    async def _submit(self, session_id: str, job_type: JobType, params: dict[str, Any], caller: Caller,
                      on_accepted: OnAccepted | None) -> Accepted:
        """Called under the session lock after `ensure_idle`: new job, fresh poll state, join, enqueue."""
        job = new_job(session_id, job_type, params, caller.sid)
        job.client_key = caller.client_key
        await self.status.reset(session_id)  # pollers must never see the previous run's `completed`
        await self.jobs.save(job, make_current=True)
        await self.status.set_status(session_id, "queued", job_id=job.job_id)
        if on_accepted is not None:
            await on_accepted(session_id)
        if self.company is not None and job.lane == GENERATION_LANE:
            self.company.submitted(job.job_id)
        try:
            await self.dispatcher.submit(job)
        except GaryError as exc:
            await self.jobs.update(job, state="failed", error=exc.message, error_code=str(exc.code))
            await self.status.set_status(session_id, "failed", error=exc.message, job_id=job.job_id)
            # the queue's own status: its code and status agree (429 full, 503 down, 4xx impossible request)
            raise GaryError(exc.code, f"Failed to queue task: {exc.message}", http_status=exc.http_status,
                            details=exc.details) from exc
        return Accepted(session_id, job)

    # --- generation -----------------------------------------------------------------------------------------
    async def process_audio(self, req: ProcessAudioRequest, *, caller: Caller = NO_CALLER,
                            on_accepted: OnAccepted | None = None) -> Accepted:
        params = self.generation_params(req, req.model_name, req.prompt_duration)
        raw = await self.decode_checked(req.audio_data)
        session_id = str(uuid.uuid4())
        async with self.session_lock(session_id):
            await self.store.upsert(session_id, self.session_fields(params))
            await self.store.put_audio(session_id, "initial_audio", raw)
            return await self._submit(session_id, "process_audio", params, caller, on_accepted)

    async def continue_music(self, req: ContinueRequest, *, created_from: str, caller: Caller = NO_CALLER,
                             on_accepted: OnAccepted | None = None,
                             no_session_message: str = "No session ID provided and no audio data to create session",
                             ) -> Accepted:
        if req.session_id is None and req.audio_data is None:
            raise GaryError(ErrorCode.BAD_REQUEST, no_session_message)
        session = await self.store.get(req.session_id) if req.session_id else None
        if req.session_id and session is None and req.audio_data is None:
            raise GaryError(ErrorCode.SESSION_NOT_FOUND, "Session not found")
        session = session or {}
        model_name = req.model_name or session.get("model_name") or catalog.DEFAULT_MODEL
        prompt_duration = req.prompt_duration or session.get("prompt_duration") or catalog.DEFAULT_PROMPT_DURATION
        params = self.generation_params(req, model_name, prompt_duration)
        raw = await self.decode_checked(req.audio_data) if req.audio_data is not None else None
        session_id = req.session_id or str(uuid.uuid4())
        async with self.session_lock(session_id):
            await self.ensure_idle(session_id)
            if raw is None and not await self.store.has_audio(session_id, "last_processed_audio"):
                raise GaryError(ErrorCode.BAD_REQUEST, "No audio to continue: send audio_data")
            await self.store.upsert(session_id, self.session_fields(params),
                                    created_from=None if session else created_from)
            if raw is not None:
                await self.store.put_audio(session_id, "last_processed_audio", raw)
            return await self._submit(session_id, "continue_music", params, caller, on_accepted)

    async def retry_music(self, req: RetryRequest, *, caller: Caller = NO_CALLER,
                          on_accepted: OnAccepted | None = None) -> Accepted:
        session = await self.require_session(req.session_id)
        model_name = req.model_name or session.get("model_name") or catalog.DEFAULT_MODEL
        prompt_duration = req.prompt_duration or session.get("prompt_duration") or catalog.DEFAULT_PROMPT_DURATION
        params = self.generation_params(req, model_name, prompt_duration)
        async with self.session_lock(req.session_id):
            await self.ensure_idle(req.session_id)
            if not await self.store.has_audio(req.session_id, "last_input_audio"):
                raise GaryError(ErrorCode.BAD_REQUEST, "No last input audio available for retry")
            await self.store.upsert(req.session_id, self.session_fields(params))
            return await self._submit(req.session_id, "retry_music", params, caller, on_accepted)

    # --- transform / undo -------------------------------------------------------------------------------------
    async def transform(self, req: TransformRequest, *, created_from: str | None = None, caller: Caller = NO_CALLER,
                        on_accepted: OnAccepted | None = None) -> Accepted:
        session = await self.store.get(req.session_id) if req.session_id else None
        if req.session_id and session is None and req.audio_data is None:
            raise GaryError(ErrorCode.SESSION_NOT_FOUND, "Session not found")
        raw = await self.decode_checked(req.audio_data) if req.audio_data is not None else None
        session_id = req.session_id or str(uuid.uuid4())
        params = {"variation": req.variation, "flowstep": req.flowstep, "solver": req.solver,
                  "custom_prompt": req.custom_prompt, "seed": _resolve_seed(req.seed)}
        async with self.session_lock(session_id):
            await self.ensure_idle(session_id)
            if raw is None:
                raw = await self.store.get_audio(session_id, "last_processed_audio")
                if raw is None:
                    raise GaryError(ErrorCode.BAD_REQUEST, "No audio data available for transformation")
            if session is None:
                await self.store.upsert(session_id, {}, created_from=created_from)
            await self.store.put_audio(session_id, "transform_input_audio", raw)
            return await self._submit(session_id, "transform_audio", params, caller, on_accepted)

    async def undo(self, session_id: str) -> str:
        """last_input_audio -> last_processed_audio (undoes the last continue, retry or transform); returns base64."""
        await self.require_session(session_id)
        async with self.session_lock(session_id):
            await self.ensure_idle(session_id)
            if not await self.store.copy_audio(session_id, "last_input_audio", "last_processed_audio"):
                raise GaryError(ErrorCode.BAD_REQUEST, "No previous audio found to undo to")
            await self.jobs.supersede(session_id)
            raw = await self.store.get_audio(session_id, "last_processed_audio")
        assert raw is not None
        return await asyncio.to_thread(lambda: base64.b64encode(raw).decode("ascii"))

    # --- crop / restore ---------------------------------------------------------------------------------------
    async def crop(self, req: CropRequest, *, created_from: str) -> tuple[str, bool]:
        """Store the client's edited audio as the session's head; returns (session_id, auto_created)."""
        raw = await self.decode_checked(req.audio_data)
        session_id = req.session_id or str(uuid.uuid4())
        auto_created = not await self.store.exists(session_id)
        if auto_created:
            await self.store.upsert(session_id, {"model_name": catalog.DEFAULT_MODEL,
                                                 "prompt_duration": catalog.DEFAULT_PROMPT_DURATION},
                                    created_from=created_from)
        await self.store.put_audio(session_id, "last_processed_audio", raw)
        await self.jobs.supersede(session_id)
        return session_id, auto_created

    async def restore(self, req: RestoreRequest) -> tuple[str, int]:
        catalog.check_model(req.model_name, self.settings)
        raw = await self.decode_checked(req.audio_data)
        session_id = str(uuid.uuid4())
        await self._store_restored(session_id, raw, req.model_name, req.prompt_duration)
        return session_id, len(raw)

    async def _store_restored(self, session_id: str, raw: bytes, model_name: str | None,
                              prompt_duration: int | None) -> None:
        fields: dict[str, Any] = {"restored": True}
        if model_name and prompt_duration:
            fields.update(model_name=model_name, prompt_duration=prompt_duration)
        await self.store.upsert(session_id, fields, created_from="restore")
        await self.store.put_audio(session_id, "last_processed_audio", raw)

    async def begin_restore(self) -> str:
        session_id = str(uuid.uuid4())
        key = rediskeys.restore_upload(session_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={"bytes": 0})
            pipe.expire(key, rediskeys.RESTORE_TTL)
            await pipe.execute()
        return session_id

    async def chunk(self, req: ChunkRequest) -> tuple[dict[str, Any], dict[str, Any] | None, list[int] | None]:
        """Store one chunk; returns (chunk_received ack, restore_complete payload | None, missing indexes | None)."""
        sid = req.session_id
        if req.chunk_index >= req.total_chunks:
            raise GaryError(ErrorCode.VALIDATION_ERROR, "chunk_index must be smaller than total_chunks")
        if req.model_name:
            catalog.check_model(req.model_name, self.settings)
        upload = rediskeys.restore_upload(sid)
        received = rediskeys.received_chunks(sid)
        count = int(await self._store_chunk(
            keys=[upload, rediskeys.chunk(sid, req.chunk_index), received],
            args=[req.chunk, req.chunk_index, MAX_AUDIO_TEXT, rediskeys.CHUNK_TTL, rediskeys.RESTORE_TTL,
                  req.model_name or "", req.prompt_duration or ""]))
        if count == -1:
            raise GaryError(ErrorCode.BAD_REQUEST, "Unknown restore upload: send begin_restore_audio first")
        if count == -2:
            await self.discard_restore(sid)
            raise GaryError(ErrorCode.DATA_TOO_LARGE, "Audio data is too large to restore", http_status=413)
        ack = {"session_id": sid, "chunk_index": req.chunk_index, "total_chunks": req.total_chunks,
               "received_chunks": int(count)}
        if not req.is_last and count < req.total_chunks:
            return ack, None, None
        keys = [rediskeys.chunk(sid, i) for i in range(req.total_chunks)]
        parts = await self.redis.mget(keys)
        missing = [i for i, part in enumerate(parts) if part is None]
        if missing:
            return ack, None, missing
        meta = await self.redis.hgetall(upload)
        try:
            raw = await self.decode_checked("".join(parts))
        finally:
            await self.discard_restore(sid, total=req.total_chunks)
        prompt_duration = int(meta["prompt_duration"]) if meta.get("prompt_duration") else None
        await self._store_restored(sid, raw, meta.get("model_name"), prompt_duration)
        return ack, {"message": "Audio restored successfully", "session_id": sid, "data_size": len(raw)}, None

    async def discard_restore(self, session_id: str, *, total: int | None = None) -> None:
        received = rediskeys.received_chunks(session_id)
        indexes = range(total) if total is not None else [int(i) for i in await self.redis.smembers(received)]
        keys = [rediskeys.chunk(session_id, i) for i in indexes]
        await self.redis.delete(*keys, received, rediskeys.restore_upload(session_id))

    # --- read side ----------------------------------------------------------------------------------------------
    async def poll_status(self, session_id: str) -> dict[str, Any]:
        """gary4juce's poll, field for field; `status` and `audio_data` come from the session's current job."""
        session = await self.require_session(session_id)
        job = await self.jobs.current(session_id)
        active = await self.is_active(job)
        stored = await self.status.get_status(session_id) or {}
        if job is None:
            state = stored.get("status", "unknown")
        elif active:
            # status:{sid} was reset when this job was submitted, so what it holds now is this job's (gary's, or
            # terry's "warming"/"processing" during a transform, which carry no job id)
            state = stored.get("status") if stored.get("status") in ("queued", "warming", "processing") else job.state
        else:
            state = job.state if job.state in ("completed", "failed") else "failed"
        progress = 100 if state == "completed" else int(await self.status.get_progress(session_id))
        audio_data = None
        if not active and state != "failed":
            raw = await self.store.get_audio(session_id, "last_processed_audio")
            audio_data = base64.b64encode(raw).decode("ascii") if raw else None
        queue_status: dict[str, Any] | None = await self.status.get_queue_status(session_id)
        if queue_status is None and active and job is not None:
            queue_status = await self.dispatcher.live_status(job)
            if queue_status is None and progress == 0:
                queue_status = {"status": "warming", "message": f"loading {job.params.get('model_name', 'model')} "
                                "(first run / hub download)", "position": 0, "total_queued": 0,
                                "estimated_time": None, "estimated_seconds": 0, "source": "synthetic"}
        error = None
        if state == "failed":
            error = (job.error if job else None) or stored.get("error") or "the job was interrupted"
        out: dict[str, Any] = {
            "success": True,
            "session_id": session_id,
            "job_id": job.job_id if job else None,
            "generation_in_progress": bool(active and job and job.lane != TRANSFORM_LANE),
            "transform_in_progress": bool(active and job and job.lane == TRANSFORM_LANE),
            "progress": progress,
            "status": state,
            "error": error,
            "audio_data": audio_data,
            "queue_status": queue_status or {},
            "session_data": {k: session.get(k) for k in ("model_name", "prompt_duration", "parameters", "description")},
        }
        # the newest partial result of a running generation that asked for them (existing clients never do)
        out["partial_audio"] = (await self.status.get_partial(job.job_id)
                                if active and job is not None and job.params.get("stream_partials") else None)
        if job is not None and job.seed is not None:
            out["seed"] = job.seed
            if job.lane != TRANSFORM_LANE:
                out["generation_seed"] = job.seed
        return out

    async def latest_audio(self, session_id: str) -> tuple[int, dict[str, Any]]:
        session = await self.store.get(session_id)
        if session is None:
            return 404, {"status": "not_found", "message": "Session not found"}
        if await self.active_job(session_id) is not None:
            return 202, {"status": "in_progress", "message": "Generation in progress"}
        raw = await self.store.get_audio(session_id, "last_processed_audio")
        if raw is None:
            return 404, {"status": "no_audio", "message": "No generated audio for this session"}
        return 200, {"status": "success", "audio_data": base64.b64encode(raw).decode("ascii"),
                     "model_name": session.get("model_name"), "prompt_duration": session.get("prompt_duration"),
                     "session_id": session_id}


# Atomic so chunks racing a discard (or each other) can't leave keys behind or slip past the size cap.
# Returns the number of chunks received, -1 when the upload is unknown, -2 when the total would exceed the cap.
_STORE_CHUNK = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local previous = redis.call('STRLEN', KEYS[2])
local total = redis.call('HINCRBY', KEYS[1], 'bytes', string.len(ARGV[1]) - previous)
if total > tonumber(ARGV[3]) then return -2 end
redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[4])
redis.call('SADD', KEYS[3], ARGV[2])
redis.call('EXPIRE', KEYS[3], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
if ARGV[6] ~= '' and ARGV[7] ~= '' then
  redis.call('HSET', KEYS[1], 'model_name', ARGV[6], 'prompt_duration', ARGV[7])
end
return redis.call('SCARD', KEYS[3])
"""


def _resolve_seed(seed: int | None) -> int:
    """-1/None -> a seed chosen now, so it can be echoed at once and stays reproducible."""
    return secrets.randbelow(2**31) if seed is None or seed == -1 else int(seed)
