"""Every Socket.IO event gary handles (gary4live, gary4beatbox): validate, call `Operations`, answer.

Immediate answers go to the asking connection; results, progress and queue status go to the session's room AND the
asking connection (the original sent them only to the room, so a client whose connection had not joined it — or had
reconnected — never heard them). `verify_session` re-joins a session after a reconnect and re-delivers a result that
finished while the client was away.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any

import socketio
from redis.exceptions import RedisError

from garycommon.errors import ErrorCode, GaryError
from garycommon.redisconn import client_error

from .auth import fairness_key, refusal, socket_key, user_key_ok
from .context import GaryContext
from .notifications import error_payload
from .operations import Caller
from .payloads import (
    RESTORE_CHUNK_SIZE,
    ChunkRequest,
    ContinueRequest,
    CropRequest,
    ProcessAudioRequest,
    RestoreRequest,
    RetryRequest,
    SessionRequest,
    TransformRequest,
    validate,
)
from .sessions import check_session_id

log = logging.getLogger(__name__)

Handler = Callable[[str, Any], Awaitable[None]]


def _requested_session(data: Any) -> str | None:
    """The session id a failed request named, if it is a well-formed one (errors carry it; never a random id)."""
    value = data.get("session_id") if isinstance(data, dict) else None
    try:
        return check_session_id(value) if value else None
    except GaryError:
        return None


def register(sio: socketio.AsyncServer, ctx: GaryContext) -> None:
    ops = ctx.ops

    def on(event: str) -> Callable[[Handler], Handler]:
        """Register a handler whose GaryErrors (and crashes) become an `error` event to the asking connection."""

        def decorate(fn: Handler) -> Handler:
            @wraps(fn)
            async def wrapper(sid: str, data: Any = None) -> None:
                try:
                    await fn(sid, data)
                except GaryError as err:
                    await sio.emit("error", error_payload(err, _requested_session(data)), to=sid)
                except RedisError as exc:  # busy pool -> QUEUE_FULL, Redis down -> 503 "retrying"; never INTERNAL
                    log.warning("%s: redis %s: %s", event, type(exc).__name__, exc)
                    await sio.emit("error", error_payload(client_error(exc), _requested_session(data)), to=sid)
                except Exception as exc:
                    log.exception("%s failed", event)
                    err = GaryError(ErrorCode.INTERNAL, f"internal error handling {event}: {type(exc).__name__}")
                    await sio.emit("error", error_payload(err, _requested_session(data)), to=sid)

            sio.on(event, wrapper)
            return wrapper

        return decorate

    def accepted(sid: str, ack_event: str) -> Callable[[str], Awaitable[None]]:
        """Join the room and acknowledge — before the job is queued, so the first queue_status can't be missed."""

        async def hook(session_id: str) -> None:
            await sio.enter_room(sid, session_id)
            await sio.emit(ack_event, {"session_id": session_id}, to=sid)

        return hook

    async def to_session(event: str, payload: dict[str, Any], session_id: str, sid: str) -> None:
        await sio.emit(event, payload, to=[session_id, sid])

    @sio.event
    async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        key = socket_key(environ, auth)
        if ctx.settings.api_keys and not user_key_ok(ctx.settings, key):
            # refused handshake: the client's connect_error carries this message (no event is ever handled)
            raise socketio.exceptions.ConnectionRefusedError(refusal(key))
        forwarded = str(environ.get("HTTP_X_FORWARDED_FOR") or "").split(",")[0].strip()
        await sio.save_session(sid, {"client_key": fairness_key(ctx.settings, key,
                                                                forwarded or environ.get("REMOTE_ADDR"))})

    async def caller(sid: str) -> Caller:
        session = await sio.get_session(sid)
        return Caller(sid, session.get("client_key"))

    @on("process_audio_request")
    async def process_audio_request(sid: str, data: Any) -> None:
        req = validate(ProcessAudioRequest, data)
        await ops.process_audio(req, caller=await caller(sid), on_accepted=accepted(sid, "process_audio_received"))

    @on("continue_music_request")
    async def continue_music_request(sid: str, data: Any) -> None:
        req = validate(ContinueRequest, data)
        await ops.continue_music(req, created_from="jerry_continue", caller=await caller(sid),
                                 on_accepted=accepted(sid, "continue_music_received"))

    @on("retry_music_request")
    async def retry_music_request(sid: str, data: Any) -> None:
        req = validate(RetryRequest, data)
        await ops.retry_music(req, caller=await caller(sid), on_accepted=accepted(sid, "retry_music_received"))

    @on("transform_audio_request")
    async def transform_audio_request(sid: str, data: Any) -> None:
        req = validate(TransformRequest, data)
        await ops.transform(req, created_from="jerry_transform", caller=await caller(sid),
                            on_accepted=accepted(sid, "transform_audio_received"))

    @on("undo_transform_request")
    async def undo_transform_request(sid: str, data: Any) -> None:
        req = validate(SessionRequest, data)
        audio = await ops.undo(req.session_id)
        await sio.enter_room(sid, req.session_id)
        await to_session("transform_undone", {"audio_data": audio, "session_id": req.session_id}, req.session_id, sid)

    @on("update_cropped_audio")
    async def update_cropped_audio(sid: str, data: Any) -> None:
        req = validate(CropRequest, data)
        session_id, auto_created = await ops.crop(req, created_from="jerry_crop")
        await sio.enter_room(sid, session_id)
        await to_session("update_cropped_audio_complete", {
            "message": "Cropped audio stored", "session_id": session_id, "auto_created": auto_created,
        }, session_id, sid)

    @on("restore_processed_audio")
    async def restore_processed_audio(sid: str, data: Any) -> None:
        req = validate(RestoreRequest, data)
        session_id, size = await ops.restore(req)
        await sio.enter_room(sid, session_id)
        await to_session("restore_complete", {"message": "Audio restored successfully", "session_id": session_id,
                                              "data_size": size}, session_id, sid)

    @on("begin_restore_audio")
    async def begin_restore_audio(sid: str, data: Any) -> None:
        session_id = await ops.begin_restore()
        await sio.enter_room(sid, session_id)
        await sio.emit("ready_for_chunks", {"session_id": session_id, "chunk_size": RESTORE_CHUNK_SIZE}, to=sid)

    # python-socketio runs each event in its own task: without this, a client that streams its chunks without
    # waiting for acks could have its last chunk checked before the ones sent just before it are stored.
    chunk_order: dict[str, asyncio.Lock] = {}

    @on("audio_chunk")
    async def audio_chunk(sid: str, data: Any) -> None:
        async with chunk_order.setdefault(sid, asyncio.Lock()):  # taken before any await: arrival order
            req = validate(ChunkRequest, data)
            ack, complete, missing = await ops.chunk(req)
            await sio.emit("chunk_received", ack, to=sid)
            if missing:
                await sio.emit("chunks_missing", {"session_id": req.session_id, "missing_chunks": missing}, to=sid)
            elif complete is not None:
                await sio.enter_room(sid, req.session_id)
                await to_session("restore_complete", complete, req.session_id, sid)

    @sio.event
    async def disconnect(sid: str, *_: Any) -> None:
        chunk_order.pop(sid, None)

    @on("cleanup_session_request")
    async def cleanup_session_request(sid: str, data: Any) -> None:
        req = validate(SessionRequest, data)
        await ops.discard_restore(req.session_id)
        await sio.leave_room(sid, req.session_id)
        await sio.emit("cleanup_complete", {"message": "Session cleaned up", "session_id": req.session_id}, to=sid)

    @on("verify_session")
    async def verify_session(sid: str, data: Any) -> None:
        req = validate(SessionRequest, data)
        session_id = req.session_id
        exists = await ctx.store.exists(session_id)
        job = await ctx.jobs.current(session_id) if exists else None
        if exists:
            await sio.enter_room(sid, session_id)
        await sio.emit("session_verified", {
            "session_id": session_id, "exists": exists, "job_id": job.job_id if job else None,
            "status": job.state if job else None, "progress": int(await ctx.status.get_progress(session_id)),
        }, to=sid)
        if job is None or job.superseded or sid in job.redelivered_to or job.state not in ("completed", "failed"):
            return
        await ctx.jobs.update(job, redelivered_to=[*job.redelivered_to, sid])
        if job.state == "failed":
            err = GaryError(ErrorCode(job.error_code) if job.error_code in ErrorCode.__members__ else ErrorCode.INTERNAL,
                            job.error or "the job failed")
            await sio.emit("error", error_payload(err, session_id), to=sid)
            return
        raw = await ctx.store.get_audio(session_id, "last_processed_audio")
        if raw is not None:
            payload = ctx.runner.result_payload(job, base64.b64encode(raw).decode("ascii"),
                                                {**(job.result or {}), "redelivered": True})
            await sio.emit(job.result_event, payload, to=sid)

    @on("request_progress_status")
    async def request_progress_status(sid: str, data: Any) -> None:
        req = validate(SessionRequest, data)
        progress = int(await ctx.status.get_progress(req.session_id))
        await sio.emit("progress_update", {"progress": progress, "session_id": req.session_id}, to=sid)
        queue = await ctx.status.get_queue_status(req.session_id)
        if queue:
            await sio.emit("queue_status", queue, to=sid)
