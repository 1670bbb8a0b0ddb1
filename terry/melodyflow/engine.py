"""MelodyFlowEngine: load `facebook/melodyflow-t24-30secs` and edit audio toward a text prompt.

An edit (what terry serves): VAE-encode the input, draw the posterior sample, normalise with the DiT's latent
statistics, invert it without guidance from t=1 down to `flowstep`, integrate back to t=1 under the prompt with
classifier-free guidance (4.0), de-normalise and decode. Euler runs 25 steps with a regularised inversion
(2 evaluations per step, the last one KL-regularised, lambda 0.2); midpoint runs 64 steps each way.
Progress counts DiT evaluations with the original's totals (euler 25*3 = 75, midpoint 64*2 = 128 per window).

Audio is processed at the codec's true 48 kHz. `Settings.terry_legacy_32k` restores the original service's quirk
(32 kHz samples fed to the 48 kHz codec: the model hears everything 1.5x fast, and the window holds ~45 s): the math
is identical, only the declared sample rate changes. Output is exactly as long as the input: the tail is zero-padded
to whole latent frames and cropped after decoding; inputs longer than the window go through `windows`.
"""

from __future__ import annotations

import gc
import logging
import math
import secrets
import threading
from collections.abc import Callable
from pathlib import Path

import torch

from garycommon.errors import AudioError, ErrorCode, GaryError, ModelLoadError
from garycommon.hub import resolve_model_dir
from garycommon.settings import Settings

from . import windows
from .checkpoint import (
    CODEC_FILE,
    DIT_FILE,
    check_state,
    codec_config,
    dit_config,
    expected_codec_keys,
    expected_dit_keys,
    load_package,
)
from .codec import SEANetVAE, posterior_sample
from .dit import FlowDiT
from .graphs import GraphedDiT
from .solver import Regularization, integrate

log = logging.getLogger(__name__)

DEMO_MARKER = "gary_demo"
LEGACY_SAMPLE_RATE = 32000
MIN_SECONDS = 1.0
WINDOW_OVERLAP_SECONDS = 3.0
STEPS = {"euler": 25, "midpoint": 64}
EULER_REGULARIZATION = Regularization(iters=2, keep_last=1, lambda_kl=0.2)
TEXT_PAD = 32  # text lengths are padded to a multiple of this (masked, exact) so CUDA graphs are reused across prompts

Progress = Callable[[float], None]


class MelodyFlowEngine:
    """The MelodyFlow editor. Not thread-safe: one `transform` at a time (the service holds a lock / queue lease)."""

    def __init__(
        self,
        dit: FlowDiT,
        codec: SEANetVAE,
        tokenizer: object,
        text_encoder: torch.nn.Module,
        *,
        device: torch.device,
        demo: bool,
        legacy_32k: bool = False,
        max_batch: int = 2,
        use_cuda_graphs: bool | None = None,
    ) -> None:
        self.dit: FlowDiT | None = dit
        self.codec: SEANetVAE | None = codec
        self.tokenizer = tokenizer
        self.text_encoder: torch.nn.Module | None = text_encoder
        self.device = device
        self.demo = demo
        self.legacy_32k = legacy_32k
        self.max_batch = max(1, max_batch)
        self.hop = codec.config.hop_length
        self.channels = codec.config.channels
        self.max_frames = int(dit.config.segment_duration * codec.config.frame_rate)
        self.sample_rate = LEGACY_SAMPLE_RATE if legacy_32k else codec.config.sample_rate
        self.max_seconds = self.max_frames * self.hop / self.sample_rate
        self.cfg_coef = dit.config.cfg_coef
        self.last_seed: int | None = None
        graphs = device.type == "cuda" if use_cuda_graphs is None else use_cuda_graphs
        self._step: Callable[..., torch.Tensor] = GraphedDiT(dit) if graphs else dit
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls,
        name_or_path: str,
        settings: Settings,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> MelodyFlowEngine:
        """Resolve and load the checkpoint (strict keys/shapes), its codec and its T5; `dtype` is the DiT compute dtype."""
        from garycommon.devices import cpu_dtype, pick_device
        from garycommon.textenc import load_t5

        device = device or pick_device(settings.device)
        folder = resolve_model_dir(name_or_path, [DIT_FILE, CODEC_FILE], settings)
        dit_cfg_raw, dit_state = load_package(Path(folder) / DIT_FILE)
        codec_cfg_raw, codec_state = load_package(Path(folder) / CODEC_FILE)
        dcfg, ccfg = dit_config(dit_cfg_raw), codec_config(codec_cfg_raw)
        check_state(dit_state, expected_dit_keys(dcfg), DIT_FILE)
        check_state(codec_state, expected_codec_keys(ccfg), CODEC_FILE)

        with torch.device("meta"):
            dit, codec = FlowDiT(dcfg), SEANetVAE(ccfg)
        dit.load_state_dict(dit_state, strict=True, assign=True)
        codec.load_state_dict(codec_state, strict=True, assign=True)
        del dit_state, codec_state
        codec.fold_weight_norm()
        dit.eval().requires_grad_(False)
        codec.eval().requires_grad_(False)
        compute = dtype or (torch.bfloat16 if device.type == "cuda" else cpu_dtype(settings.cpu_dtype))
        dit.to(device=device, dtype=torch.float32)
        dit.set_compute_dtype(compute)
        dit.transformer.rope.tables(max(1024, int(dcfg.segment_duration * ccfg.frame_rate)))
        codec.to(device)
        tokenizer, encoder = load_t5(dcfg.t5_name, settings, device, torch.float32)
        hidden = getattr(getattr(encoder, "config", None), "d_model", dcfg.cond_dim)
        if hidden != dcfg.cond_dim:
            raise ModelLoadError(
                ErrorCode.MODEL_LOAD_FAILED, f"text encoder {dcfg.t5_name} has width {hidden}, the DiT expects {dcfg.cond_dim}"
            )
        demo = bool(dit_cfg_raw.get(DEMO_MARKER, False))
        log.info("MelodyFlow loaded from %s on %s (compute %s%s)", folder, device, compute, ", demo weights" if demo else "")
        return cls(dit, codec, tokenizer, encoder, device=device, demo=demo, legacy_32k=settings.terry_legacy_32k)

    def unload(self) -> None:
        """Drop every weight and cached graph; the engine cannot transform afterwards."""
        with self._lock:
            if isinstance(self._step, GraphedDiT):
                self._step.clear()
            self._step = _unloaded
            self.dit = self.codec = self.text_encoder = None
            gc.collect()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    # ------------------------------------------------------------------ editing
    def transform(
        self,
        audio: torch.Tensor,
        prompt: str,
        *,
        flowstep: float = 0.12,
        solver: str = "euler",
        steps: int | None = None,
        seed: int | None = None,
        progress: Progress | None = None,
    ) -> torch.Tensor:
        """Edit `audio` [C, T] at `sample_rate` toward `prompt`; returns [channels, T] float32 on the CPU."""
        wav = self._validate(audio, flowstep, solver)
        steps = STEPS[solver] if steps is None else int(steps)
        if steps < 1 or (solver == "midpoint" and steps % 2):
            kind = "a positive even" if solver == "midpoint" else "a positive"
            raise GaryError(ErrorCode.VALIDATION_ERROR, f"{solver} needs {kind} step count, got {steps}")
        self.last_seed = secrets.randbits(63) if seed is None else int(seed)
        with self._lock:
            if self.dit is None or self.codec is None:
                raise GaryError(ErrorCode.SERVICE_UNAVAILABLE, "the MelodyFlow model is unloaded")
            try:
                return self._run(wav, prompt, flowstep, solver, steps, self.last_seed, progress)
            except torch.cuda.OutOfMemoryError as exc:
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                raise GaryError(ErrorCode.GPU_OOM, "the GPU ran out of memory during the transform") from exc

    def _validate(self, audio: torch.Tensor, flowstep: float, solver: str) -> torch.Tensor:
        if not isinstance(audio, torch.Tensor) or audio.dim() not in (1, 2) or audio.numel() == 0:
            raise AudioError(ErrorCode.AUDIO_EMPTY, "audio must be a non-empty [channels, samples] tensor")
        wav = audio.detach().to(torch.float32)
        wav = wav.unsqueeze(0) if wav.dim() == 1 else wav
        if wav.shape[0] == 1:
            wav = wav.expand(self.channels, -1)
        elif wav.shape[0] != self.channels:
            raise AudioError(ErrorCode.VALIDATION_ERROR, f"audio must have 1 or {self.channels} channels, got {wav.shape[0]}")
        if wav.shape[-1] < MIN_SECONDS * self.sample_rate:
            raise AudioError(
                ErrorCode.AUDIO_TOO_SHORT,
                f"audio is {wav.shape[-1] / self.sample_rate:.2f} s long; MelodyFlow needs at least {MIN_SECONDS:.0f} s",
            )
        if not torch.isfinite(wav).all():
            raise AudioError(ErrorCode.VALIDATION_ERROR, "audio contains NaN or infinite samples")
        if not (isinstance(flowstep, int | float) and 0.0 < float(flowstep) < 1.0):
            raise GaryError(ErrorCode.VALIDATION_ERROR, f"flowstep must be in (0, 1), got {flowstep!r}")
        if solver not in STEPS:
            raise GaryError(ErrorCode.VALIDATION_ERROR, f"solver must be one of {sorted(STEPS)}, got {solver!r}")
        return wav

    def _run(
        self, wav: torch.Tensor, prompt: str, flowstep: float, solver: str, steps: int, seed: int, progress: Progress | None
    ) -> torch.Tensor:
        total = wav.shape[-1]
        window = self.max_frames * self.hop
        starts = windows.plan(total, window, int(WINDOW_OVERLAP_SECONDS * self.sample_rate))
        chunks = [starts[i : i + self.max_batch] for i in range(0, len(starts), self.max_batch)]
        regularization = EULER_REGULARIZATION if solver == "euler" else None
        per_window = steps * (regularization.iters + 1) if regularization else steps * 2
        reporter = _Reporter(progress, per_window * len(chunks))
        generator = torch.Generator(device=self.device).manual_seed(seed)
        with torch.inference_mode():
            text = self._encode_text(prompt)
            pieces: list[torch.Tensor] = []
            for chunk in chunks:
                if len(starts) == 1:
                    frames = math.ceil(total / self.hop)
                    batch = torch.nn.functional.pad(wav, (0, frames * self.hop - total))[None]
                else:
                    batch = torch.stack([wav[:, s : s + window] for s in chunk])
                out = self._edit(batch.to(self.device), text, flowstep, solver, steps, regularization, generator, reporter)
                pieces.extend(out.float().cpu())
                reporter.advance(per_window)
        result = windows.stitch(pieces, starts, total)
        reporter.finish()
        return result.contiguous()

    def _encode_text(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(cond [1, L, D], bias [1, 1, 1, L+1]) for the prompt; L padded to a multiple of TEXT_PAD with masked slots."""
        assert self.dit is not None and self.text_encoder is not None
        tok = self.tokenizer(  # type: ignore[operator]
            [prompt], return_tensors="pt", padding=True
        )
        ids, mask = tok["input_ids"].to(self.device), tok["attention_mask"].to(self.device)
        hidden = self.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        if prompt == "":
            mask = torch.zeros_like(mask)  # the original's null prompt: every text token masked
        pad = -hidden.shape[1] % TEXT_PAD
        hidden = torch.nn.functional.pad(hidden, (0, 0, 0, pad))
        mask = torch.nn.functional.pad(mask, (0, pad))
        return self.dit.project_text(hidden.float(), mask)

    def _edit(
        self,
        batch: torch.Tensor,
        text: tuple[torch.Tensor, torch.Tensor],
        flowstep: float,
        solver: str,
        steps: int,
        regularization: Regularization | None,
        generator: torch.Generator,
        reporter: _Reporter,
    ) -> torch.Tensor:
        assert self.dit is not None and self.codec is not None
        dit, codec = self.dit, self.codec
        z = posterior_sample(codec.encode(batch), generator)
        x0 = (z - dit.latent_mean) / (dit.latent_std + 1e-5)
        cond, bias = text
        null_cond = torch.zeros_like(cond)
        null_bias = torch.full_like(bias, float("-inf"))
        null_bias[..., 0] = 0

        def unconditional(x: torch.Tensor, t: float) -> torch.Tensor:
            return self._step(x, torch.full((x.shape[0],), t, device=x.device), None, None)

        def guided(x: torch.Tensor, t: float) -> torch.Tensor:
            rows = x.shape[0]
            conds = torch.cat([cond.expand(rows, -1, -1), null_cond.expand(rows, -1, -1)])
            biases = torch.cat([bias.expand(rows, -1, -1, -1), null_bias.expand(rows, -1, -1, -1)])
            v = self._step(torch.cat([x, x]), torch.full((2 * rows,), t, device=x.device), conds, biases)
            return (1 + self.cfg_coef) * v[:rows] - self.cfg_coef * v[rows:]

        inverted = integrate(
            unconditional, x0, 1.0, flowstep, solver=solver, steps=steps, regularization=regularization, x0=x0,
            generator=generator, on_step=reporter.step,
        )
        offset = steps * regularization.iters if regularization else steps
        edited = integrate(
            guided, inverted, flowstep, 1.0, solver=solver, steps=steps, on_step=lambda i, _t: reporter.step(offset + i, 0)
        )
        latent = edited * (dit.latent_std + 1e-5) + dit.latent_mean
        return codec.decode(latent)


def _unloaded(*_args: object, **_kwargs: object) -> torch.Tensor:
    raise GaryError(ErrorCode.SERVICE_UNAVAILABLE, "the MelodyFlow model is unloaded")


class _Reporter:
    """Turns per-window DiT-call counts into an overall percentage: 0..99.9 while running, 100 only at the end."""

    def __init__(self, callback: Progress | None, total: int) -> None:
        self.callback = callback
        self.total = max(total, 1)
        self.base = 0

    def step(self, done: int, _total: int) -> None:
        if self.callback is not None:
            self.callback(min((self.base + done) / self.total * 100.0, 99.9))

    def advance(self, count: int) -> None:
        self.base += count

    def finish(self) -> None:
        if self.callback is not None:
            self.callback(100.0)
