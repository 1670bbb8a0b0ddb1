"""HTTP transport: validate and translate only. The model work lives in runner/model_host, audio in audio_io."""

from __future__ import annotations

import json
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from garycommon.errors import ErrorCode, GaryError
from garycommon.httpapp import check_api_key

from . import audio_io
from .presets import CUSTOM, EULER_STEPS, MIDPOINT_STEPS, PRESETS, resolve_prompt
from .progress import TransformProgress
from .runner import TransformJob
from .schemas import VariationInfo, VariationsResponse, parse_transform
from .service import TerryService

router = APIRouter()
SUCCESS_MESSAGE = "Audio processed successfully"


def _service(request: Request) -> TerryService:
    return request.app.state.terry


@router.post("/transform")
async def transform(request: Request) -> dict[str, Any]:
    """The original's synchronous transform: JSON in, base64 WAV out (see audio_io for the output format)."""
    svc = _service(request)
    check_api_key(request, svc.settings.api_keys)
    try:
        body = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GaryError(ErrorCode.BAD_REQUEST, f"request body must be JSON: {exc}") from exc
    req = parse_transform(body)
    prompt, preset = resolve_prompt(req.variation, req.custom_prompt)
    solver = req.solver or "euler"
    flowstep = req.flowstep if req.flowstep is not None else (preset.flowstep if preset else 0.12)
    steps = req.steps or (MIDPOINT_STEPS if solver == "midpoint" else (preset.steps if preset else EULER_STEPS))
    session_id = req.resolved_session_id()

    audio = audio_io.load_input(req.audio_file_path, req.audio, svc.settings, svc.settings.terry_max_input_seconds)
    frame = audio_io.framing(
        audio, svc.engine_rate, legacy=svc.settings.terry_legacy_32k, output_sample_rate=req.output_sample_rate
    )
    job = TransformJob(
        session_id=session_id,
        prompt=prompt,
        audio=audio_io.to_model(audio, frame),
        rate=frame.model_rate,
        seconds=audio.duration,
        flowstep=flowstep,
        solver=solver,
        steps=steps,
        seed=req.seed,
        lease_id=req.lease_id,
        fencing_token=req.fencing_token,
    )
    progress = TransformProgress(session_id, svc.status_store, svc.emitter)
    started = time.monotonic()
    await progress.start()
    outcome = await svc.runner.run(job, progress)
    wav = await svc.host.call(audio_io.from_model, outcome.audio, outcome.sample_rate, frame)
    encoded = await svc.host.call(audio_io.wav_b64, wav, frame.out_rate)
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
