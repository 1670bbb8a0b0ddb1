"""The generation pipeline behind every /generate* route: parsed request in, WAV bytes + metadata out.

One rule for `seconds_total` everywhere: the model is conditioned on exactly the length of audio the client
receives (the loop length for loops, the whole window for style transfer). Seeds are drawn here when the client
sends -1, so the seed reported is the seed used, and the engine's per-request generator makes it reproducible.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any

import torch

from garycommon.errors import ErrorCode, GaryError
from garycommon.metrics import JERRY_GENERATION_SECONDS
from garycommon.settings import Settings

from . import bpm as bpm_math
from .batcher import Batcher
from .loops import guidance_mask
from .models import ModelEntry, ModelRegistry
from .prompting import shape_for_loop_type
from .riffs import RiffLibrary
from .sao import SAORequest
from .schemas import GenerateRequest, LoopGuidedRequest, LoopRequest, RiffRequest, StyleTransferRequest
from .wav import decode_upload, fit_window, render_wav

log = logging.getLogger(__name__)

DEFAULT_SECONDS = 11.0


@dataclass
class Rendered:
    wav: bytes
    filename: str
    metadata: dict[str, Any]


def pick_seed(seed: int) -> int:
    return secrets.randbelow(2**32 - 1) if seed == -1 else seed


def default_sampler(entry: ModelEntry, requested: str | None) -> str:
    if requested:
        return requested
    return "euler" if entry.objective == "rectified_flow" else "pingpong"


class Generator:
    def __init__(self, settings: Settings, registry: ModelRegistry, batcher: Batcher, riffs: RiffLibrary) -> None:
        self.settings = settings
        self.registry = registry
        self.batcher = batcher
        self.riffs = riffs

    # -- shared helpers ---------------------------------------------------------------------------------------------
    async def _upload(self, raw: bytes, entry: ModelEntry) -> torch.Tensor:
        return await asyncio.to_thread(
            decode_upload, raw, sample_rate=entry.sample_rate, window_samples=entry.window_samples,
            max_bytes=self.settings.max_audio_bytes, max_seconds=self.settings.jerry_max_input_seconds,
        )

    async def _run(self, entry: ModelEntry, **fields: Any) -> tuple[torch.Tensor, float]:
        """Queue one request for the GPU worker; returns the audio and the seconds it took (queueing included)."""
        started = time.perf_counter()
        result = await self.batcher.submit(entry.engine, SAORequest(**fields))
        took = time.perf_counter() - started
        JERRY_GENERATION_SECONDS.observe(took)
        log.info("%s: %d %s steps, cfg %g, seed %d, %.2f s of audio in %.3f s", entry.key, fields["steps"],
                 fields["sampler_type"], fields["cfg_scale"], result.seed, fields["seconds_total"], took)
        return result.audio, took

    def _base_meta(self, entry: ModelEntry, generation_time: float) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "sample_rate": entry.sample_rate,
            "generation_time": round(generation_time, 2),
            "device": self.registry.device.type,
            "model": entry.source,
            "demo": bool(entry.engine.demo),
        }
        if self.registry.device.type == "cuda":
            meta["gpu_memory_used"] = round(torch.cuda.memory_allocated() / 1e9, 2)
            meta["gpu_memory_peak"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
        return meta

    def _normalize(self, requested: bool | None) -> bool:
        return self.settings.jerry_peak_normalize if requested is None else requested

    # -- routes -----------------------------------------------------------------------------------------------------
    async def generate(self, req: GenerateRequest) -> Rendered:
        prompt = req.require_prompt()
        entry = await self.registry.get(req.model_type, req.finetune_repo, req.finetune_checkpoint)
        window = entry.window_seconds
        notes = []
        if req.seconds_total is None:
            seconds = min(DEFAULT_SECONDS, window)
        else:
            if req.seconds_total < 1:
                raise GaryError(ErrorCode.VALIDATION_ERROR, "seconds_total must be >= 1")
            seconds = float(req.seconds_total)
            if seconds > window:
                notes.append(f"seconds_total {seconds:g} clamped to the model window {window:.2f}")
                seconds = window
        samples = min(round(seconds * entry.sample_rate), entry.window_samples)
        steps = req.steps if req.steps is not None else (50 if entry.objective == "rectified_flow" else 8)
        seed = pick_seed(req.seed)
        sampler = default_sampler(entry, req.sampler_type)
        audio, took = await self._run(entry, prompt=prompt, negative_prompt=req.negative_prompt, seconds_total=seconds,
                                      steps=steps, cfg_scale=req.cfg_scale, seed=seed, sampler_type=sampler)
        normalize = self._normalize(req.normalize)
        wav = await asyncio.to_thread(render_wav, audio, entry.sample_rate, samples, normalize=normalize)
        duration = samples / entry.sample_rate
        meta = {
            "prompt": prompt, "negative_prompt": req.negative_prompt, "steps": steps, "cfg_scale": req.cfg_scale,
            "seed": seed, "sampler_type": sampler, "seconds_total": round(seconds, 3),
            "duration_seconds": round(duration, 3), "realtime_factor": round(duration / max(took, 1e-6), 2),
            "detected_bpm": bpm_math.extract_bpm(prompt), "model_type": req.model_type, "normalized": normalize,
            **self._base_meta(entry, took),
        }
        if notes:
            meta["notes"] = notes
        return Rendered(wav, f"stable_audio_{seed}_{int(time.time())}.wav", meta)

    async def loop(self, req: LoopRequest, audio_file: bytes | None) -> Rendered:
        prompt = req.require_prompt()
        tempo = bpm_math.require_bpm(prompt)
        bars = bpm_math.parse_bars(req.bars, bpm_math.LOOP_BARS)
        entry = await self.registry.get(req.model_type, req.finetune_repo, req.finetune_checkpoint)
        plan = bpm_math.plan_loop(tempo, bars, sample_rate=entry.sample_rate, window_samples=entry.window_samples)
        shaped = shape_for_loop_type(prompt, req.loop_type, req.negative_prompt)
        init = await self._upload(audio_file, entry) if audio_file is not None else None
        seed = pick_seed(req.seed)
        sampler = default_sampler(entry, req.sampler_type)
        audio, took = await self._run(
            entry, prompt=shaped.prompt, negative_prompt=shaped.negative_prompt, seconds_total=plan.seconds,
            steps=req.steps, cfg_scale=req.cfg_scale, seed=seed, sampler_type=sampler,
            init_audio=init, init_noise_level=req.style_strength if init is not None else None,
        )
        normalize = self._normalize(req.normalize)
        wav = await asyncio.to_thread(render_wav, audio, entry.sample_rate, plan.samples, normalize=normalize)
        meta = {
            "prompt": shaped.prompt, "original_prompt": prompt, "negative_prompt": shaped.negative_prompt or "",
            "loop_type": req.loop_type, **_loop_meta(plan),
            "available_audio_seconds": round(entry.window_seconds, 2),
            "style_transfer": init is not None, "style_strength": req.style_strength if init is not None else None,
            "model_type": req.model_type, "steps": req.steps, "cfg_scale": req.cfg_scale, "sampler_type": sampler,
            "seed": seed, "normalized": normalize, **self._base_meta(entry, took),
        }
        name = f"loop_{_safe(req.loop_type)}_{plan.bpm}bpm_{plan.bars}bars_{seed}.wav"
        return Rendered(wav, name, meta)

    async def style_transfer(self, req: StyleTransferRequest, audio_file: bytes) -> Rendered:
        prompt = req.require_prompt()
        entry = self.registry.standard()
        init = await self._upload(audio_file, entry)
        seed = pick_seed(req.seed)
        seconds = entry.window_seconds
        audio, took = await self._run(
            entry, prompt=prompt, negative_prompt=req.negative_prompt, seconds_total=seconds, steps=req.steps,
            cfg_scale=req.cfg_scale, seed=seed, sampler_type="pingpong", init_audio=init, init_noise_level=req.style_strength,
        )
        normalize = self._normalize(req.normalize)
        wav = await asyncio.to_thread(render_wav, audio, entry.sample_rate, entry.window_samples, normalize=normalize)
        meta = {
            "prompt": prompt, "negative_prompt": req.negative_prompt, "style_strength": req.style_strength,
            "steps": req.steps, "cfg_scale": req.cfg_scale, "seed": seed, "seconds_total": round(seconds, 3),
            "duration_seconds": round(seconds, 3), "realtime_factor": round(seconds / max(took, 1e-6), 2),
            "detected_bpm": bpm_math.extract_bpm(prompt), "input_audio_shape": list(init.shape), "normalized": normalize,
            **self._base_meta(entry, took),
        }
        return Rendered(wav, f"style_transfer_{seed}_{int(time.time())}.wav", meta)

    async def loop_guided(self, req: LoopGuidedRequest, audio_file: bytes) -> Rendered:
        prompt = req.require_prompt()
        tempo = bpm_math.require_bpm(prompt)
        bars = bpm_math.parse_bars(req.bars, None)
        entry = await self.registry.get(req.model_type, req.finetune_repo, req.finetune_checkpoint)
        if entry.objective not in ("rectified_flow", "rf_denoiser"):
            raise GaryError(ErrorCode.BAD_REQUEST,
                            f"guided loop only supports rectified_flow / rf_denoiser (got {entry.objective})")
        plan = bpm_math.plan_loop(tempo, bars, sample_rate=entry.sample_rate, window_samples=entry.window_samples)
        shaped = shape_for_loop_type(prompt, req.loop_type, req.negative_prompt)
        guide = await self._upload(audio_file, entry)
        mask = guidance_mask(req.guidance_mask, plan, latent_frames=entry.window_samples // entry.downsampling,
                             downsampling=entry.downsampling, start_weight=req.guidance_start_weight,
                             end_weight=req.guidance_end_weight)
        seed = pick_seed(req.seed)
        sampler = default_sampler(entry, req.sampler_type)
        audio, took = await self._run(
            entry, prompt=shaped.prompt, negative_prompt=shaped.negative_prompt, seconds_total=plan.seconds,
            steps=req.steps, cfg_scale=req.cfg_scale, seed=seed, sampler_type=sampler, guide_audio=guide,
            guide_mask=mask, guide_strength=req.guidance_strength,
        )
        normalize = self._normalize(req.normalize)
        wav = await asyncio.to_thread(render_wav, audio, entry.sample_rate, plan.samples, normalize=normalize)
        meta = {
            "prompt": shaped.prompt, "original_prompt": prompt, "negative_prompt": shaped.negative_prompt or "",
            "loop_type": req.loop_type, **_loop_meta(plan), "guidance_mask": req.guidance_mask,
            "guidance_strength": req.guidance_strength, "guidance_start_weight": req.guidance_start_weight,
            "guidance_end_weight": req.guidance_end_weight, "model_type": req.model_type, "steps": req.steps,
            "cfg_scale": req.cfg_scale, "sampler_type": sampler, "seed": seed, "normalized": normalize,
            **self._base_meta(entry, took),
        }
        return Rendered(wav, f"guided_loop_{plan.bpm}bpm_{plan.bars}bars_{seed}.wav", meta)

    async def loop_with_riff(self, req: RiffRequest) -> Rendered:
        prompt = req.require_prompt()
        if not req.key:
            raise GaryError(ErrorCode.VALIDATION_ERROR, "key is required (e.g., 'gsharp', 'f', 'csharp')")
        tempo = bpm_math.require_bpm(prompt)
        bars = bpm_math.parse_bars(req.bars, None)
        entry = self.registry.standard()
        riff = self.riffs.pick(req.key)
        if riff is None:  # maybe added to the folder since the last scan
            await asyncio.to_thread(self.riffs.rescan)
            riff = self.riffs.pick(req.key)
        if riff is None:
            raise GaryError(ErrorCode.BAD_REQUEST, f"No riffs available for key '{req.key}'",
                            details={"available_keys": self.riffs.keys()})
        plan = bpm_math.plan_loop(tempo, bars, sample_rate=entry.sample_rate, window_samples=entry.window_samples)
        try:
            init = await asyncio.to_thread(RiffLibrary.render, riff, tempo, entry.sample_rate, entry.window_samples)
        except (OSError, RuntimeError, ValueError) as exc:
            raise GaryError(ErrorCode.BAD_REQUEST,
                            f"No riffs available for key '{req.key}': {riff.filename} is unreadable ({exc})",
                            details={"available_keys": self.riffs.keys()}) from exc
        shaped = shape_for_loop_type(prompt, req.loop_type, req.negative_prompt)
        seed = pick_seed(req.seed)
        audio, took = await self._run(
            entry, prompt=shaped.prompt, negative_prompt=shaped.negative_prompt, seconds_total=plan.seconds,
            steps=req.steps, cfg_scale=req.cfg_scale, seed=seed, sampler_type="pingpong",
            init_audio=fit_window(init, entry.window_samples), init_noise_level=req.style_strength,
        )
        normalize = self._normalize(req.normalize)
        wav = await asyncio.to_thread(render_wav, audio, entry.sample_rate, plan.samples, normalize=normalize)
        meta = {
            "prompt": shaped.prompt, "original_prompt": prompt, "key": req.key.strip().lower(),
            "negative_prompt": shaped.negative_prompt or "", "loop_type": req.loop_type, **_loop_meta(plan),
            "style_transfer": True, "style_strength": req.style_strength, "steps": req.steps, "cfg_scale": req.cfg_scale,
            "seed": seed, "riff": riff.filename, "riff_original_bpm": riff.original_bpm,
            "source": "personal_riff_library", "normalized": normalize, **self._base_meta(entry, took),
        }
        name = f"riff_{req.key.strip().lower()}_{_safe(req.loop_type)}_{plan.bpm}bpm_{plan.bars}bars_{seed}.wav"
        return Rendered(wav, name, meta)


def _loop_meta(plan: bpm_math.LoopPlan) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "detected_bpm": plan.bpm, "bars": plan.bars, "loop_duration_seconds": round(plan.seconds, 2),
        "loop_samples": plan.samples, "calculated_duration_seconds": round(plan.calculated_seconds, 2),
        "seconds_per_bar": round(plan.seconds_per_bar, 2), "seconds_total": round(plan.seconds, 4),
    }
    if plan.requested_bars is not None:
        meta["requested_bars"] = plan.requested_bars
    if plan.adjusted:
        meta["notes"] = [f"{plan.requested_bars} bars at {plan.bpm} bpm do not fit the {plan.window_seconds:.2f} s model "
                         f"window; returning {plan.bars} bars"]
    return meta


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)[:32] or "auto"
