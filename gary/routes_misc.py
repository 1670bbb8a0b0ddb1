"""gary's other HTTP routes: health, the queue gateway's callback, the model list, result recovery,
session cleanup and warm-up (the last two need an API key when API_KEYS is set)."""

from __future__ import annotations

import gc
import json
import logging
import resource
import time
import uuid
from typing import Any

import torch
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from garycommon import rediskeys
from garycommon.errors import GaryError
from garycommon.httpapp import check_api_key
from garycommon.queueprotocol import TaskNotification

from . import catalog
from .auth import notification_refused
from .context import GaryContext
from .notifications import queue_status_payload, read_notification
from .sessions import check_session_id

log = logging.getLogger(__name__)
router = APIRouter()

CLEANUP_AGE_SECONDS = 24 * 3600
FAILURE_STATUSES = frozenset({"failed", "expired", "cancelled", "canceled", "timeout", "lost"})


def _ctx(request: Request) -> GaryContext:
    return request.app.state.gary


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    ctx = _ctx(request)
    body: dict[str, Any] = {"status": "live"}
    try:
        await ctx.store.ping()
        body["mongodb"] = "live"
    except Exception as exc:
        body["mongodb"] = f"down: {exc}"
    try:
        await ctx.redis.ping()
        body["redis"] = "live"
    except Exception as exc:
        body["redis"] = f"down: {exc}"
    body["pytorch"] = "live" if torch.cuda.is_available() else "no GPU detected"
    body["session_store"] = ctx.settings.session_store
    body["queue"] = ctx.settings.queue_url or "solo"
    body["queue_mode"] = ctx.settings.queue_mode
    body["demo"] = ctx.settings.demo_models
    healthy = body["mongodb"] == "live" and body["redis"] == "live"
    body["status"] = "live" if healthy else "degraded"
    return JSONResponse(body, status_code=200 if healthy else 500)


@router.post("/task_notification")
async def task_notification(request: Request) -> JSONResponse:
    """The gateway's callback. Each X-Notification-ID is handled once; `ready` starts the job once per job."""
    ctx = _ctx(request)
    raw = await request.body()
    refused = notification_refused(ctx.settings, request, raw)
    if refused is not None:
        log.warning("refused a task notification from %s: %s", request.client.host if request.client else "?", refused)
        return JSONResponse({"status": "error", "message": refused}, status_code=401)
    try:
        note, data = read_notification(raw)
    except GaryError as err:
        return JSONResponse({"status": "error", "message": err.message}, status_code=400)
    session_id, status = note.session_id, note.status
    notification_id = request.headers.get("X-Notification-ID") or f"{session_id}_{status}_{time.time_ns()}"
    if len(notification_id) > 200:
        return JSONResponse({"status": "error", "message": "X-Notification-ID too long"}, status_code=400)
    try:
        fresh = await ctx.redis.set(rediskeys.task_notification(notification_id), json.dumps(data), nx=True,
                                    ex=rediskeys.NOTIFICATION_TTL)
        if not fresh:
            return JSONResponse({"status": "received", "notification_id": notification_id,
                                 "message": "duplicate notification ignored"})
        message = await _handle_notification(ctx, note, notification_id)
    except Exception as exc:
        error_id = uuid.uuid4().hex[:12]
        log.exception("task notification %s failed (error_id %s)", notification_id, error_id)
        return JSONResponse({"status": "error", "error_id": error_id, "message": f"{type(exc).__name__}: {exc}"},
                            status_code=500)
    return JSONResponse({"status": "received", "notification_id": notification_id, "message": message})


async def _handle_notification(ctx: GaryContext, note: TaskNotification, notification_id: str) -> str:
    session_id, status, job_id = note.session_id, note.status, note.job_id
    job = await ctx.jobs.current(session_id)
    requester = job.requester if job else None
    if status in FAILURE_STATUSES:
        if job is not None and job.state == "queued" and job_id in (None, job.job_id):
            await ctx.runner.fail_queued(job, note.error or f"the GPU queue reported the task {status}")
            return "queued job marked failed"
        return "noted"
    queue = note.queue_status.model_dump(exclude_none=True) if note.queue_status else {}
    await ctx.notifier.queue_status(queue_status_payload(session_id, status, queue, notification_id=notification_id),
                                    requester)
    if status != "ready":
        return "queue status relayed"
    return await ctx.runner.start_ready(session_id, note.type, job_id=job_id, lease_id=note.lease_id,
                                        fencing_token=note.fencing_token)


@router.get("/api/models")
async def models() -> dict[str, Any]:
    return catalog.models_response()


@router.get("/api/latest_generated_audio/{session_id}")
async def latest_generated_audio(session_id: str, request: Request) -> JSONResponse:
    try:
        check_session_id(session_id)
    except GaryError as err:
        return JSONResponse({"status": "error", "message": err.message}, status_code=400)
    code, body = await _ctx(request).ops.latest_audio(session_id)
    return JSONResponse(body, status_code=code)


def _rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


@router.post("/api/cleanup_old_sessions")
async def cleanup_old_sessions(request: Request) -> dict[str, Any]:
    """Sessions older than 24 h and their audio (Redis needs nothing: every key has a TTL)."""
    ctx = _ctx(request)
    check_api_key(request, ctx.settings.api_keys)
    before = _rss_mb()
    errors: list[str] = []
    try:
        removed = await ctx.store.cleanup_older_than(CLEANUP_AGE_SECONDS)
    except Exception as exc:
        removed = {}
        errors.append(f"{type(exc).__name__}: {exc}")
    gc.collect()
    stats = {"mongodb_sessions": removed.get("sessions", 0), "gridfs_files": removed.get("files", 0), "redis_keys": 0,
             "errors": errors, "memory_before_gc": before, "memory_after_gc": _rss_mb()}
    return {"status": "partial_success" if errors else "success", "cleanup_stats": stats,
            "message": f"removed {stats['mongodb_sessions']} sessions and {stats['gridfs_files']} audio files"}


@router.post("/api/warmup", status_code=202)
async def warmup(request: Request) -> dict[str, Any]:
    """Preload the warm-up models in the GPU worker (through the queue when there is one); returns at once."""
    ctx = _ctx(request)
    check_api_key(request, ctx.settings.api_keys)
    results = ctx.runner.start_warmup(catalog.WARMUP_MODELS)
    return {"success": True, "message": "Warm-up started; see GET /api/warmup/status", "results": results}


@router.get("/api/warmup/status")
async def warmup_status(request: Request) -> dict[str, Any]:
    ctx = _ctx(request)
    return {"available": True, "models": list(catalog.WARMUP_MODELS), "status": ctx.runner.warmup_state}

