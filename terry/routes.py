"""HTTP transport: validate and translate only. The model work lives in runner/model_host, audio in audio_io."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import torch
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from garycommon.audio import Audio
from garycommon.errors import ErrorCode, GaryError
from garycommon.keys import caller, key_identity

from . import audio_io
from .presets import CUSTOM, DEFAULT_FLOWSTEP, EULER_STEPS, MIDPOINT_STEPS, PRESETS, resolve_prompt
from .progress import TransformProgress
from .runner import TransformJob
from .schemas import TransformRequest, VariationInfo, VariationsResponse, parse_transform
from .service import TerryService

router = APIRouter()
SUCCESS_MESSAGE = "Audio processed successfully"


def _service(request: Request) -> TerryService:
    return request.app.state.terry


@router.post("/transform")
async def transform(request: Request) -> dict[str, Any]:
    """The original's synchronous transform: JSON in, base64 WAV out (see audio_io for the output format).

    Parsing, decoding, resampling and encoding run on worker threads (never the event loop, never the model thread,
    so they neither stall /health nor queue behind the next transform)."""
    svc = _service(request)
    who = caller(request, svc.settings.api_keys, svc.settings.service_key, admin_key=svc.settings.admin_key)
    raw = await _read_body(request, _body_limit(svc.settings.max_audio_bytes))
    req = parse_transform(await asyncio.to_thread(_parse_json, raw))
    del raw
    prompt, preset = resolve_prompt(req.variation, req.custom_prompt)
    solver = req.solver or "euler"
    flowstep = req.flowstep if req.flowstep is not None else (preset.flowstep if preset else DEFAULT_FLOWSTEP)
    steps = req.steps or (MIDPOINT_STEPS if solver == "midpoint" else (preset.steps if preset else EULER_STEPS))
    session_id = req.resolved_session_id()

    audio, frame, model_in = await asyncio.to_thread(_prepare_input, req, svc)
    job = TransformJob(
        session_id=session_id,
        prompt=prompt,
        audio=model_in,
        rate=frame.model_rate,
        seconds=audio.duration,
        flowstep=flowstep,
        solver=solver,
        steps=steps,
        seed=req.seed,
        lease_id=req.lease_id,
        fencing_token=req.fencing_token,
        client_key=key_identity(who.key) if who.key and not who.service else None,
    )
    progress = TransformProgress(session_id, svc.status_store, svc.emitter)
    started = time.monotonic()
    await progress.start()
    outcome = await svc.runner.run(job, progress)
    encoded = await asyncio.to_thread(_encode_output, outcome.audio, outcome.sample_rate, frame)
    return {
        "audio": encoded,
        "message": SUCCESS_MESSAGE,
        "session_id": session_id,
        "seed": outcome.seed,
        "metadata": {
            "variation": req.variation,
            "prompt": prompt,
            "custom_prompt": bool(req.custom_prompt and req.custom_prompt.strip()),
            "flowstep": flowstep,
            "solver": solver,
            "steps": steps,
            "seed": outcome.seed,
            "format": "wav",
            "sample_format": "float32",
            "sample_rate": frame.out_rate,
            "channels": 2,
            "num_samples": frame.out_frames,
            "duration": round(frame.out_frames / frame.out_rate, 6),
            "input_sample_rate": audio.sample_rate,
            "input_num_samples": audio.num_samples,
            "processing_sample_rate": svc.engine_rate,
            "legacy_32k": svc.settings.terry_legacy_32k,
            "model": svc.settings.terry_model,
            "demo": svc.demo,
            "model_loaded_for_request": outcome.loaded_model,
            "lease": outcome.lease,
            "compute_seconds": round(outcome.seconds, 3),
            "total_seconds": round(time.monotonic() - started, 3),
        },
    }


def _body_limit(max_audio_bytes: int) -> int:
    """Base64 of the largest accepted audio plus room for the JSON around it."""
    return max_audio_bytes * 4 // 3 + 1024 * 1024


async def _read_body(request: Request, limit: int) -> bytes:
    """Read the body, refusing more than `limit` bytes before buffering them (a 2 GB post costs nothing)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> GaryError:
    return GaryError(ErrorCode.DATA_TOO_LARGE, f"request body is larger than {limit // (1024 * 1024)} MiB")


def _parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GaryError(ErrorCode.BAD_REQUEST, f"request body must be JSON: {exc}") from exc


def _prepare_input(req: TransformRequest, svc: TerryService) -> tuple[Audio, audio_io.Framing, torch.Tensor]:
    settings = svc.settings
    audio = audio_io.load_input(req.audio_file_path, req.audio, settings, settings.terry_max_input_seconds)
    frame = audio_io.framing(audio, svc.engine_rate, legacy=settings.terry_legacy_32k,
                             output_sample_rate=req.output_sample_rate)
    return audio, frame, audio_io.to_model(audio, frame)


def _encode_output(wav: torch.Tensor, rate: int, frame: audio_io.Framing) -> str:
    return audio_io.wav_b64(audio_io.from_model(wav, rate, frame), frame.out_rate)


@router.get("/variations", response_model=VariationsResponse)
async def variations() -> VariationsResponse:
    return VariationsResponse(
        variations={
            name: VariationInfo(prompt=p.prompt, flowstep=p.flowstep, steps=p.steps) for name, p in PRESETS.items()
        },
        custom=f"send variation '{CUSTOM}' (or any name) with custom_prompt to use your own text",
        solvers={"euler": EULER_STEPS, "midpoint": MIDPOINT_STEPS},
        flowstep="in (0, 1): how far the input is inverted toward noise before regenerating with the prompt; "
        "LOWER = MORE change (near 0 discards the input), higher keeps more of it; default 0.12",
    )


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    svc = _service(request)
    body = svc.health()
    return JSONResponse(body, status_code=200 if body["status"] == "healthy" else 503)
