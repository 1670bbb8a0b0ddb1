"""gary4juce's HTTP API (`/api/juce/*`): the same operations as the Socket.IO events, answered as JSON.

Errors are `{success: false, error, code}` with the original's status codes (400 validation / in progress, 404
unknown session); a queue refusal keeps the queue's own status and code (429 full, 503 unavailable, 422 no GPU can
hold the job). The plugin's `seed` is used and echoed (`seed`, then `generation_seed` in polls).
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request

from garycommon.errors import ErrorCode, GaryError
from garycommon.keys import presented_key

from .auth import fairness_key
from .context import GaryContext
from .operations import Accepted, Caller
from .payloads import (
    ContinueRequest,
    CropRequest,
    ProcessAudioRequest,
    RetryRequest,
    SessionRequest,
    TransformRequest,
    validate,
)
from .sessions import check_session_id

router = APIRouter(prefix="/api/juce")


def _ctx(request: Request) -> GaryContext:
    return request.app.state.gary


def _caller(request: Request) -> Caller:
    """The queue's fairness key: the client's API key (KeyGate has checked it), else its address."""
    forwarded = request.headers.get("x-forwarded-for", "").split(",")[0].strip()
    address = forwarded or (request.client.host if request.client else None)
    return Caller(None, fairness_key(_ctx(request).settings, presented_key(request.headers), address))


async def _body(request: Request) -> Any:
    raw = await request.body()
    if not raw.strip():
        raise GaryError(ErrorCode.BAD_REQUEST, "No JSON data received")
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return raw.decode("utf-8", "replace")  # maybe Swift-escaped JSON: the payload parser decides


def _queued(acc: Accepted, message: str) -> dict[str, Any]:
    out: dict[str, Any] = {"success": True, "session_id": acc.session_id, "job_id": acc.job.job_id,
                           "message": message, "note": "Poll /api/juce/poll_status/{session_id} for the result"}
    if acc.job.seed is not None:
        out["seed"] = acc.job.seed
    return out


@router.post("/process_audio")
async def process_audio(request: Request) -> dict[str, Any]:
    req = validate(ProcessAudioRequest, await _body(request))
    acc = await _ctx(request).ops.process_audio(req, caller=_caller(request))
    return _queued(acc, "Audio processing queued")


@router.post("/continue_music")
async def continue_music(request: Request) -> dict[str, Any]:
    req = validate(ContinueRequest, await _body(request))
    acc = await _ctx(request).ops.continue_music(req, created_from="juce_continue", caller=_caller(request),
                                                 no_session_message="Session ID required")
    return _queued(acc, "Music continuation queued")


@router.post("/retry_music")
async def retry_music(request: Request) -> dict[str, Any]:
    req = validate(RetryRequest, await _body(request))
    acc = await _ctx(request).ops.retry_music(req, caller=_caller(request))
    return _queued(acc, "Music retry queued")


@router.post("/transform_audio")
async def transform_audio(request: Request) -> dict[str, Any]:
    req = validate(TransformRequest, await _body(request))
    acc = await _ctx(request).ops.transform(req, created_from="juce_transform", caller=_caller(request))
    out = _queued(acc, "Audio transform queued")
    out["info"] = {"variation": req.variation, "flowstep": req.flowstep, "solver": req.solver or "euler"}
    return out


@router.post("/undo_transform")
async def undo_transform(request: Request) -> dict[str, Any]:
    req = validate(SessionRequest, await _body(request))
    audio = await _ctx(request).ops.undo(req.session_id)
    return {"success": True, "session_id": req.session_id, "message": "Transform undone", "audio_data": audio}


@router.post("/update_cropped_audio")
async def update_cropped_audio(request: Request) -> dict[str, Any]:
    req = validate(CropRequest, await _body(request))
    session_id, auto_created = await _ctx(request).ops.crop(req, created_from="juce_crop")
    return {"success": True, "session_id": session_id, "message": "Cropped audio stored", "auto_created": auto_created}


@router.get("/poll_status/{session_id}")
async def poll_status(session_id: str, request: Request) -> dict[str, Any]:
    return await _ctx(request).ops.poll_status(check_session_id(session_id))
