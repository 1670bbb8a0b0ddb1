"""HTTP transport: every route of the original (same paths, fields and reply shapes), validation and translation only.

JSON and form bodies are read by hand (the original's routes accept both on /generate/loop) and validated by the
pydantic models in `schemas.py`; their schemas are published in the OpenAPI document so /docs shows every field.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.datastructures import UploadFile

from garycommon.audio import b64decode_audio
from garycommon.errors import ErrorCode, GaryError
from garycommon.httpapp import check_api_key
from garycommon.hub import check_allowed, download_progress, local_dir_for

from .generation import Rendered
from .models import EMPTY_PROMPTS
from .schemas import (
    CheckpointsRequest,
    GenerateRequest,
    LoopGuidedRequest,
    LoopRequest,
    RiffRequest,
    StyleTransferRequest,
    SwitchRequest,
    parse_fields,
)
from .state import JerryState, get_state

MAX_FORM_FILES = 2
MAX_FORM_FIELDS = 64
CHECKPOINT_SUFFIXES = (".ckpt", ".safetensors")

JSON = "application/json"
MULTIPART = "multipart/form-data"
URLENCODED = "application/x-www-form-urlencoded"


def _require_key(request: Request) -> None:
    check_api_key(request, get_state(request).settings.api_keys)


open_router = APIRouter()
router = APIRouter(dependencies=[Depends(_require_key)])


# -- body reading ---------------------------------------------------------------------------------------------------
@dataclass
class Body:
    fields: dict[str, Any]
    files: dict[str, UploadFile]


async def read_body(request: Request, *, allow: tuple[str, ...] = (JSON, MULTIPART, URLENCODED)) -> Body:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == JSON and JSON in allow:
        raw = await request.body()
        try:
            data = json.loads(raw) if raw else None
        except ValueError as exc:
            raise GaryError(ErrorCode.VALIDATION_ERROR, f"body is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise GaryError(ErrorCode.VALIDATION_ERROR, "JSON body required")
        return Body(data, {})
    if ctype in (MULTIPART, URLENCODED) and ctype in allow:
        try:
            form = await request.form(max_files=MAX_FORM_FILES, max_fields=MAX_FORM_FIELDS)
        except GaryError:
            raise
        except Exception as exc:  # starlette raises its own parser errors: all mean a malformed body
            raise GaryError(ErrorCode.VALIDATION_ERROR, f"could not read the form body: {exc}") from None
        fields: dict[str, Any] = {}
        files: dict[str, UploadFile] = {}
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                files[name] = value
            else:
                fields[name] = value
        return Body(fields, files)
    if not ctype and not await request.body():
        return Body({}, {})
    expected = " or ".join(allow)
    raise GaryError(ErrorCode.VALIDATION_ERROR, f"Unsupported Content-Type {ctype or '(none)'}; send {expected}",
                    http_status=415)


async def read_upload(body: Body, name: str, state: JerryState, *, required: bool) -> bytes | None:
    """The bytes of an uploaded file part, or of base64 text in `audio_base64` / `<name>` (JSON or form), size-capped;
    None when absent and optional."""
    cap = state.settings.max_audio_bytes
    upload = body.files.get(name)
    if upload is None or not upload.filename:
        text = body.fields.get("audio_base64") or body.fields.get(name)
        if isinstance(text, str) and text.strip():
            return b64decode_audio(text, max_bytes=cap)
        if required:
            raise GaryError(ErrorCode.VALIDATION_ERROR, f"{name} is required" if upload is None else "No audio file selected")
        return None
    if upload.size is not None and upload.size > cap:
        raise GaryError(ErrorCode.DATA_TOO_LARGE, f"{name} is larger than {cap // (1024 * 1024)} MiB")
    data = await upload.read(cap + 1)
    if len(data) > cap:
        raise GaryError(ErrorCode.DATA_TOO_LARGE, f"{name} is larger than {cap // (1024 * 1024)} MiB")
    if not data:
        raise GaryError(ErrorCode.AUDIO_EMPTY, f"{name} is empty")
    return data


def respond(rendered: Rendered, return_format: str) -> Response:
    if return_format == "base64":
        return JSONResponse({"success": True, "audio_base64": base64.b64encode(rendered.wav).decode("ascii"),
                             "metadata": rendered.metadata})
    headers = {"Content-Disposition": f'attachment; filename="{rendered.filename}"',
               "X-Seed": str(rendered.metadata.get("seed", ""))}
    return Response(rendered.wav, media_type="audio/wav", headers=headers)


def body_doc(model: type[BaseModel], *, json_body: bool = True, form: bool = True,
             files: dict[str, bool] | None = None) -> dict[str, Any]:
    """OpenAPI requestBody for a hand-read body: the model's fields as JSON and/or form fields (+ file parts)."""
    schema = model.model_json_schema()
    content: dict[str, Any] = {}
    if json_body:
        json_schema = schema
        if files:
            audio_b64 = {"type": "string", "title": "audio_base64", "description": "base64 of an audio file (any format)"}
            json_schema = {**schema, "properties": {**schema.get("properties", {}), "audio_base64": audio_b64}}
        content[JSON] = {"schema": json_schema}
    if form:
        props = dict(schema.get("properties", {}))
        for name, _required in (files or {}).items():
            props[name] = {"type": "string", "format": "binary", "title": name}
        required = [n for n, req in (files or {}).items() if req]
        content[MULTIPART] = {"schema": {"type": "object", "properties": props, **({"required": required} if required else {})}}
    audio = {"audio/wav": {"schema": {"type": "string", "format": "binary"}}}
    return {"requestBody": {"required": True, "content": content},
            "responses": {"200": {"description": "WAV attachment, or JSON with audio_base64 + metadata", "content": audio}}}


# -- generation -----------------------------------------------------------------------------------------------------
@router.post("/generate", summary="Text to audio (JSON)", openapi_extra=body_doc(GenerateRequest, form=False))
async def generate(request: Request) -> Response:
    state = get_state(request)
    body = await read_body(request)
    req = parse_fields(GenerateRequest, body.fields)
    return respond(await state.generator.generate(req), req.return_format)


@router.post("/generate/loop", summary="BPM-aware loop (JSON, or multipart with an optional audio_file)",
             openapi_extra=body_doc(LoopRequest, files={"audio_file": False}))
async def generate_loop(request: Request) -> Response:
    state = get_state(request)
    body = await read_body(request)
    req = parse_fields(LoopRequest, body.fields)
    audio = await read_upload(body, "audio_file", state, required=False)
    return respond(await state.generator.loop(req, audio), req.return_format)


@router.post("/generate/style-transfer", summary="Audio to audio style transfer (multipart, or JSON with audio_base64)",
             openapi_extra=body_doc(StyleTransferRequest, files={"audio_file": True}))
async def generate_style_transfer(request: Request) -> Response:
    state = get_state(request)
    body = await read_body(request)
    audio = await read_upload(body, "audio_file", state, required=True)
    req = parse_fields(StyleTransferRequest, body.fields)
    assert audio is not None
    return respond(await state.generator.style_transfer(req, audio), req.return_format)


@router.post("/generate/loop-guided", summary="Loop guided by a riff (latent inpainting; multipart, or JSON with audio_base64)",
             openapi_extra=body_doc(LoopGuidedRequest, files={"audio_file": True}))
async def generate_loop_guided(request: Request) -> Response:
    state = get_state(request)
    body = await read_body(request)
    audio = await read_upload(body, "audio_file", state, required=True)
    req = parse_fields(LoopGuidedRequest, body.fields)
    assert audio is not None
    return respond(await state.generator.loop_guided(req, audio), req.return_format)


@router.post("/generate/loop-with-riff", summary="Loop styled on a riff from the library (multipart or JSON)",
             openapi_extra=body_doc(RiffRequest))
async def generate_loop_with_riff(request: Request) -> Response:
    state = get_state(request)
    body = await read_body(request)
    req = parse_fields(RiffRequest, body.fields)
    return respond(await state.generator.loop_with_riff(req), req.return_format)


# -- info and management --------------------------------------------------------------------------------------------
@open_router.get("/health", summary="Readiness: 200 once the model is loaded (never loads or downloads anything)")
async def health(request: Request) -> JSONResponse:
    state = get_state(request)
    reg = state.registry
    body: dict[str, Any] = {"device": reg.device.type, "cuda_available": torch.cuda.is_available(), "demo": reg.demo,
                            "model": state.settings.jerry_model, "queue_lease": state.lease.get("state"),
                            "queue_mode": state.settings.queue_mode}
    entry = reg.entries().get("standard_saos")
    if entry is not None:
        body.update(status="healthy", model_loaded=True, model_info={
            "sample_rate": entry.sample_rate, "sample_size": entry.window_samples,
            "diffusion_objective": entry.objective}, pending_requests=state.batcher.pending())
        return JSONResponse(body)
    if reg.state == "error":
        body.update(status="error", model_loaded=False, error=reg.error)
    else:
        body.update(status="loading", model_loaded=False, downloads=download_progress(),  # per file: bytes done/total
                    **({"last_error": reg.error} if reg.error else {}))
    return JSONResponse(body, status_code=503)


@router.get("/model/info", summary="Model facts, endpoints and parameter defaults")
async def model_info(request: Request) -> dict[str, Any]:
    state = get_state(request)
    entry = state.registry.standard()
    return {
        "model_name": state.settings.jerry_model,
        "device": state.registry.device.type,
        "demo": state.registry.demo,
        "config": {"sample_rate": entry.sample_rate, "sample_size": entry.window_samples,
                   "max_duration_seconds": round(entry.window_seconds, 3), "diffusion_objective": entry.objective,
                   "io_channels": int(getattr(entry.engine, "channels", 2))},
        "supported_endpoints": {
            "/generate": "Text-to-audio generation (JSON)",
            "/generate/loop": "BPM-aware loop generation, text or style transfer (JSON or multipart)",
            "/generate/style-transfer": "Audio-to-audio style transfer (multipart)",
            "/generate/loop-guided": "Loop guided by an uploaded riff (multipart)",
            "/generate/loop-with-riff": "Loop styled on a riff from the library (multipart)",
        },
        "supported_parameters": {
            "prompt": {"type": "string", "required": True},
            "steps": {"type": "int", "default": 8, "range": "1-250 (style-transfer 1-100)", "note": "loop-guided: 50"},
            "cfg_scale": {"type": "float", "default": "1.0 /generate and riff, 6.0 loop, style-transfer, loop-guided",
                          "range": "0-20"},
            "negative_prompt": {"type": "string", "required": False, "note": "only has an effect when cfg_scale != 1"},
            "seed": {"type": "int", "default": -1, "note": "-1 for random; the used seed is in metadata"},
            "seconds_total": {"type": "float", "default": 11, "range": f"1-{entry.window_seconds:.2f}", "note": "/generate"},
            "return_format": {"type": "string", "default": "file", "options": ["file", "base64"]},
            "style_strength": {"type": "float", "default": 0.8, "range": "0.1-1.0", "note": "for style transfer"},
            "loop_type": {"type": "string", "default": "auto", "options": ["drums", "instruments", "auto"]},
            "bars": {"type": "int", "default": "auto", "options": [1, 2, 4, 8]},
            "normalize": {"type": "bool", "default": state.settings.jerry_peak_normalize},
        },
    }


@router.get("/riffs/available", summary="Keys and riffs in the riff library")
async def riffs_available(request: Request) -> dict[str, Any]:
    riffs = get_state(request).riffs
    await asyncio.to_thread(riffs.rescan)  # riffs dropped into the folder (a volume) show up without a restart
    keys = riffs.keys()
    return {"available_keys": keys, "total_keys": len(keys), "riff_details": riffs.details()}


@router.post("/models/checkpoints", summary="Checkpoint files of an allowed fine-tune repo",
             openapi_extra=body_doc(CheckpointsRequest, form=False))
async def models_checkpoints(request: Request) -> dict[str, Any]:
    state = get_state(request)
    req = parse_fields(CheckpointsRequest, (await read_body(request, allow=(JSON,))).fields)
    repo = (req.finetune_repo or "").strip()
    if not repo:
        raise GaryError(ErrorCode.VALIDATION_ERROR, "finetune_repo is required")
    check_allowed(repo, state.settings)
    files = await asyncio.to_thread(_list_repo_files, repo, state)
    checkpoints = sorted(f for f in files if f.endswith(CHECKPOINT_SUFFIXES))
    if not checkpoints:
        raise GaryError(ErrorCode.NOT_FOUND, "No .ckpt checkpoint files found in repository", details={"repo": repo})
    return {"success": True, "repo": repo, "checkpoints": checkpoints, "count": len(checkpoints)}


def _list_repo_files(repo: str, state: JerryState) -> list[str]:
    folder = local_dir_for(repo, state.settings)
    if folder is not None:
        return [str(p.relative_to(folder)) for p in Path(folder).rglob("*") if p.is_file()]
    try:
        from huggingface_hub import list_repo_files

        return list(list_repo_files(repo, token=state.settings.hf_token_value))
    except Exception as exc:  # hub errors of every kind (offline, 404, gated) mean the same thing to the client
        raise GaryError(ErrorCode.NOT_FOUND, f"Could not access repository: {exc}",
                        details={"hint": "Check that the repository exists and is public (or set HF_TOKEN)"}) from exc


@router.post("/models/switch", summary="Load (and keep warm) a model; generation still picks per request",
             openapi_extra=body_doc(SwitchRequest, form=False))
async def models_switch(request: Request) -> dict[str, Any]:
    state = get_state(request)
    req = parse_fields(SwitchRequest, (await read_body(request, allow=(JSON,))).fields)
    entry = await state.registry.get(req.model_type, req.finetune_repo, req.finetune_checkpoint)
    return {"success": True, "model_type": req.model_type, "device": state.registry.device.type,
            "config": {"sample_rate": entry.sample_rate, "sample_size": entry.window_samples},
            "cache_status": state.registry.cache_status(), "message": f"Successfully switched to {req.model_type} model"}


@router.get("/models/status", summary="Loaded models (LRU)")
async def models_status(request: Request) -> dict[str, Any]:
    state = get_state(request)
    device = state.registry.device.type
    return {"cache_status": state.registry.cache_status(),
            "model_details": {k: e.describe(device) for k, e in state.registry.entries().items()},
            "max_models": state.settings.jerry_max_models, "cuda_available": torch.cuda.is_available(),
            "state": state.registry.state,
            "batching": {"engine_calls": state.batcher.batches_run, "largest_batch": state.batcher.largest_batch,
                         "waiting": state.batcher.pending(), "max_batch": state.settings.jerry_max_batch}}


@router.get("/models/prompts", summary="Prompt suggestions of the selected model (prompts.json of a fine-tune)")
async def models_prompts(request: Request, key: str | None = None, repo: str | None = None,
                         checkpoint: str | None = None, prefer: str = "active") -> dict[str, Any]:
    entry = get_state(request).registry.select(key, repo, checkpoint, prefer.lower())
    if entry is None:
        return {"success": True, "prompts": None, "message": "no model selected"}
    return {"success": True, "model_key": entry.key, "type": entry.type, "source": entry.source,
            "checkpoint": entry.checkpoint, "prompts": entry.prompts or EMPTY_PROMPTS}


@router.post("/models/clear-cache", summary="Unload every fine-tune (the standard model stays resident)")
async def models_clear_cache(request: Request) -> dict[str, Any]:
    dropped = await get_state(request).registry.clear()
    return {"success": True, "message": "Model cache cleared successfully", "unloaded": dropped}


@router.post("/cleanup", summary="Release cached memory (garbage collection, CUDA cache)")
async def cleanup(request: Request) -> dict[str, Any]:
    def release() -> None:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    await get_state(request).batcher.call(release)
    return {"success": True, "message": "memory released"}
