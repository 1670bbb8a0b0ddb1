"""SAOEngine: stable-audio-open-small inference in plain torch (text-to-audio, style transfer, loop guidance).

Per request a `torch.Generator` seeded with the request's seed draws, in this order, the start noise, the VAE
posterior noise of the init audio (if any), one noise tensor per pingpong step, and the guide's posterior noise —
the same draws stable-audio-tools makes from the global RNG, so a seed gives the same audio alone, in a batch at any
position, and under concurrent load. One `generate` call groups its requests by (steps, sampler, start time) into
sampler runs of up to `max_batch` rows. The engine is not thread-safe: the service calls it from its one GPU worker
thread, which also gathers concurrent requests into one call (jerry.batcher). Which names may be loaded is the
service's decision (jerry.models): the engine loads what it is handed.
"""

from __future__ import annotations

import functools
import json
import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from garycommon.errors import ErrorCode, GaryError, ModelLoadError
from garycommon.hub import resolve_model_dir
from garycommon.settings import Settings

from .conditioning import Conditioners, T5Prompt
from .config import SAOConfig, parse_config
from .dit import DiTWrapper
from .sampling import SAMPLERS, Guidance, rf_schedule, sample
from .types import Progress, SAORequest, SAOResult
from .vae import Pretransform, prepare_2d
from .weights import load_finetune, load_full

log = logging.getLogger(__name__)

DEFAULT_MODEL = "stabilityai/stable-audio-open-small"
CONFIG_FILE = "model_config.json"
WEIGHT_FILES = ("model.safetensors", "model.ckpt")
MAX_STEPS = 500
__all__ = ["DEFAULT_MODEL", "SAOEngine", "SAORequest", "SAOResult"]


class SAONet(nn.Module):
    """Everything with weights in `model.safetensors`, under the checkpoint's own prefixes."""

    def __init__(self, cfg: SAOConfig) -> None:
        super().__init__()
        self.model = DiTWrapper(cfg.dit)
        self.conditioner = Conditioners(cfg)
        self.pretransform = Pretransform(cfg.vae)


@dataclass
class _Job:
    request: SAORequest
    seed: int
    sigma_max: float
    result: SAOResult | None = None

    @property
    def key(self) -> tuple[int, str, float]:
        return (self.request.steps, self.request.sampler_type, self.sigma_max)


def _random_seed() -> int:
    return secrets.randbelow(2**32 - 1)


class SAOEngine:
    sample_rate: int
    channels: int
    max_seconds: float
    demo: bool

    def __init__(
        self, cfg: SAOConfig, net: SAONet, text: dict[str, T5Prompt], device: torch.device, *, demo: bool = False,
        name: str = DEFAULT_MODEL, max_batch: int = 8,
    ) -> None:
        self.cfg = cfg
        self.net = net.eval().requires_grad_(False)
        self.text = text
        self.device = device
        self.demo = demo
        self.name = name
        self.max_batch = max_batch
        self.sample_rate = cfg.sample_rate
        self.channels = cfg.audio_channels
        self.max_seconds = cfg.max_seconds
        # Swapped by the CUDA fast path for graph-replaying versions of the same computations.
        self.dit_fn: Callable[..., torch.Tensor] = self.net.model.model
        self.decode_fn: Callable[[torch.Tensor], torch.Tensor] = self.net.pretransform.model.decode
        self.graph_runner: object | None = None

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls, name_or_path: str, settings: Settings, device: torch.device | None = None, dtype: torch.dtype | None = None,
        *, checkpoint: str | None = None, base: str = DEFAULT_MODEL, fast: bool | None = None, max_batch: int = 8,
    ) -> SAOEngine:
        """Load `model_config.json` + weights from a folder, LOCAL_MODELS_DIR/<owner>/<name> or the hub.

        `checkpoint` names a fine-tune file inside the repo (safetensors or weights-only .ckpt), applied over the
        weights of `base`. Names are not checked here: the service hands over only what it allows.
        `fast` (default: on CUDA) enables fused kernels and CUDA graphs; `dtype` defaults to fp16 on CUDA.
        """
        from garycommon.devices import cpu_dtype, pick_device

        device = device or pick_device(settings.device)
        if dtype is None:  # fp16 like the original deployment: more mantissa than bf16 for the VAE's audio
            # CPU: CPU_DTYPE (auto = bf16 where the CPU runs it natively: no fast fp16 there)
            dtype = torch.float16 if device.type == "cuda" else cpu_dtype(settings.cpu_dtype)
        if checkpoint is None:
            folder = resolve_model_dir(name_or_path, [CONFIG_FILE], settings, optional_files=WEIGHT_FILES)
            cfg = parse_config(json.loads((folder / CONFIG_FILE).read_text()))
            net = SAONet(cfg)
            load_full(net, _weights_file(folder))
        else:
            base_dir = resolve_model_dir(base, [CONFIG_FILE], settings, optional_files=WEIGHT_FILES)
            if Path(checkpoint).name != checkpoint or not checkpoint.endswith((".ckpt", ".safetensors")):
                raise ModelLoadError(ErrorCode.MODEL_NOT_FOUND, f"checkpoint {checkpoint!r} must be a .ckpt or "
                                     ".safetensors file name inside the repo")
            folder = resolve_model_dir(name_or_path, [checkpoint], settings,
                                       optional_files=finetune_config_candidates(checkpoint))
            cfg_path = next((folder / c for c in finetune_config_candidates(checkpoint) if (folder / c).exists()),
                            base_dir / CONFIG_FILE)
            cfg = parse_config(json.loads(cfg_path.read_text()))
            net = SAONet(cfg)
            load_full(net, _weights_file(base_dir))
            load_finetune(net, folder / checkpoint)
        demo = (folder / "demo_model.json").exists()
        text = {}
        for cond in cfg.conditioners:
            if cond.type == "t5":
                from garycommon.textenc import load_t5

                tokenizer, encoder = load_t5(cond.t5_model_name, settings, device, dtype)
                text[cond.id] = T5Prompt(tokenizer, encoder, cond.max_length)
        net.to(device=device, dtype=dtype)
        engine = cls(cfg, net, text, device, demo=demo, name=name_or_path, max_batch=max_batch)
        if device.type == "cpu" and dtype == torch.bfloat16:
            engine.use_cpu_bf16_layout()
        if fast if fast is not None else device.type == "cuda":
            from .fastpath import enable_fast_path

            enable_fast_path(engine)
        return engine

    def use_cpu_bf16_layout(self) -> None:
        """bf16 on a CPU: oneDNN's bf16 convolutions run channels-last, so the VAE decodes as channels-last 2-D
        convolutions with their weights laid out once (1.6x the 1-D layout, which reorders every activation twice)."""
        vae = self.net.pretransform.model
        prepare_2d(vae.decoder)
        self.decode_fn = functools.partial(vae.decode, layout_2d=True)

    # ------------------------------------------------------------------ public API
    def generate(self, requests: Sequence[SAORequest], progress: Progress | None = None) -> list[SAOResult]:
        """Blocking, from one thread at a time (the service's GPU worker). Results are in request order; if any
        sampler run fails, the call fails (the worker then retries its requests one by one)."""
        jobs = [self._prepare(r) for r in requests]
        groups: dict[tuple[int, str, float], list[_Job]] = {}
        for job in jobs:
            groups.setdefault(job.key, []).append(job)
        report = _guarded(progress)
        for members in groups.values():
            for start in range(0, len(members), self.max_batch):
                try:
                    self._run_group(members[start:start + self.max_batch], report)
                except torch.cuda.OutOfMemoryError as exc:
                    raise GaryError(ErrorCode.GPU_OOM,
                                    "GPU out of memory; retry with fewer concurrent requests") from exc
        return [job.result for job in jobs if job.result is not None]

    def warmup(self, batch_sizes: Sequence[int] = (1,)) -> None:
        """Short generations with and without CFG per batch size: on the fast path they compile the fused kernels,
        autotune the convolutions and capture the CUDA graphs of those shapes, so no client pays for it (a batch
        size first seen later is captured on first use, which costs that request a few seconds)."""
        for size in batch_sizes:
            self.generate([SAORequest(prompt="warm-up", steps=2, seed=i) for i in range(size)])
            self.generate([SAORequest(prompt="warm-up", steps=2, seed=i, cfg_scale=6.0, negative_prompt="noise")
                           for i in range(size)])

    # ------------------------------------------------------------------ batching
    def _prepare(self, req: SAORequest) -> _Job:
        if not isinstance(req.prompt, str):
            raise GaryError(ErrorCode.VALIDATION_ERROR, "prompt must be a string")
        if req.sampler_type not in SAMPLERS:
            raise GaryError(ErrorCode.VALIDATION_ERROR, f"sampler_type must be one of {', '.join(SAMPLERS)}")
        if not 1 <= int(req.steps) <= MAX_STEPS:
            raise GaryError(ErrorCode.VALIDATION_ERROR, f"steps must be between 1 and {MAX_STEPS}")
        if not 0 <= float(req.cfg_scale) <= 100 or not 0 <= float(req.seconds_total) <= 1e4:
            raise GaryError(ErrorCode.VALIDATION_ERROR, "cfg_scale or seconds_total out of range")
        for name in ("init_audio", "guide_audio"):
            audio = getattr(req, name)
            if audio is not None and (audio.dim() != 2 or audio.shape[-1] == 0 or audio.shape[0] > 8):
                raise GaryError(ErrorCode.VALIDATION_ERROR, f"{name} must be a [channels, samples] tensor")
        sigma_max = 1.0
        if req.init_audio is not None and req.init_noise_level is not None:
            if not 0 < float(req.init_noise_level) <= 1.0 + 1e-9:
                raise GaryError(ErrorCode.VALIDATION_ERROR, "init_noise_level must be in (0, 1]")
            sigma_max = min(float(req.init_noise_level), 1.0)
        seed = req.seed if req.seed is not None and req.seed >= 0 else _random_seed()
        return _Job(req, int(seed) % 2**63, sigma_max)

    # ------------------------------------------------------------------ the computation
    @torch.no_grad()
    def _run_group(self, jobs: list[_Job], progress: Progress) -> None:
        cfg, dev = self.cfg, self.device
        steps, sampler, sigma_max = jobs[0].key
        shape = (1, cfg.dit.io_channels, cfg.latent_length)
        noise, init_noise, step_noise, guide_noise = [], [], [], []
        for job in jobs:
            gen = torch.Generator(device=dev).manual_seed(job.seed)
            noise.append(torch.randn(shape, generator=gen, device=dev))
            has_init = job.request.init_audio is not None
            init_noise.append(torch.randn(shape, generator=gen, device=dev) if has_init else None)
            if sampler == "pingpong":
                step_noise.append(torch.stack([torch.randn(shape, generator=gen, device=dev) for _ in range(steps)]))
            has_guide = job.request.guide_audio is not None
            guide_noise.append(torch.randn(shape, generator=gen, device=dev) if has_guide else None)
        x = torch.cat(noise)
        steps_noise = torch.cat(step_noise, dim=1) if step_noise else None

        if sigma_max < 1.0:
            init = self._encode([j.request.init_audio for j in jobs], init_noise)
            x = init * (1 - sigma_max) + x * sigma_max
        guidance = self._guidance(jobs, guide_noise)

        cross, glob = self._conditioning([j.request.prompt for j in jobs], [j.request.seconds_total for j in jobs])
        cfg_rows = [i for i, j in enumerate(jobs) if float(j.request.cfg_scale) != 1.0]
        if cfg_rows:
            neg = [(i, jobs[i].request.negative_prompt) for i in cfg_rows if jobs[i].request.negative_prompt]
            uncond = torch.zeros_like(cross[cfg_rows])
            if neg:
                neg_cross, _ = self._conditioning([p for _, p in neg], [jobs[i].request.seconds_total for i, _ in neg])
                for slot, (i, _) in enumerate(neg):
                    uncond[cfg_rows.index(i)] = neg_cross[slot]
            scales = torch.tensor([float(jobs[i].request.cfg_scale) for i in cfg_rows], device=dev)[:, None, None]
            cross_all = torch.cat((cross, uncond))
            glob_all = torch.cat((glob, glob[cfg_rows])) if glob is not None else None
        else:
            cross_all, glob_all = cross, glob
        n = len(jobs)

        def velocity(xt: torch.Tensor, tt: torch.Tensor) -> torch.Tensor:
            if not cfg_rows:
                return self.dit_fn(xt, tt, cross_all, glob_all).float()
            out = self.dit_fn(torch.cat((xt, xt[cfg_rows])), torch.cat((tt, tt[cfg_rows])), cross_all, glob_all).float()
            v = out[:n].clone()
            cond, unc = v[cfg_rows], out[n:]
            v[cfg_rows] = unc + (cond - unc) * scales
            return v

        latents = sample(velocity, x, rf_schedule(steps, sigma_max).to(dev), sampler, steps_noise, guidance, progress)
        audio = self.decode_fn(latents).float()
        if audio.is_cuda:  # through pinned memory: a full-speed copy instead of a paged one
            host = torch.empty(audio.shape, dtype=audio.dtype, pin_memory=True)
            audio = host.copy_(audio)
        for i, job in enumerate(jobs):
            job.result = SAOResult(audio[i], job.seed)

    def _conditioning(self, prompts: list[str], seconds: list[float]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Cross-attention tokens [B, S, D] (ids in config order) and the global vector [B, D]."""
        tensors: dict[str, torch.Tensor] = {}
        for cond in self.cfg.conditioners:
            if cond.type == "t5":
                tensors[cond.id] = self.text[cond.id](prompts, self.device).float()
            else:
                tensors[cond.id] = self.net.conditioner.conditioners[cond.id](seconds, self.device).float()
        cross = torch.cat([tensors[i] for i in self.cfg.cross_attn_ids], dim=1)
        glob = tensors[self.cfg.global_ids[0]][:, 0, :] if self.cfg.global_ids else None
        return cross, glob

    def _fit_audio(self, audio: torch.Tensor) -> torch.Tensor:
        """Zero-pad or crop from the start to the model window; mono is duplicated, extra channels dropped."""
        audio = audio.to(self.device, torch.float32)
        out = audio.new_zeros((audio.shape[0], self.cfg.sample_size))
        length = min(audio.shape[-1], self.cfg.sample_size)
        out[:, :length] = audio[:, :length]
        want = self.cfg.vae.io_channels
        if out.shape[0] == 1 and want > 1:
            out = out.repeat(want, 1)
        return out[:want]

    def _encode(self, audios: list[torch.Tensor | None], noises: list[torch.Tensor | None]) -> torch.Tensor:
        rows = [i for i, a in enumerate(audios) if a is not None]
        latents = torch.zeros((len(audios), self.cfg.dit.io_channels, self.cfg.latent_length), device=self.device)
        if rows:
            batch = torch.stack([self._fit_audio(audios[i]) for i in rows])
            noise = torch.cat([noises[i] for i in rows]) if self.cfg.vae.vae_bottleneck else None
            latents[rows] = self.net.pretransform.model.encode(batch, noise)
        return latents

    def _guidance(self, jobs: list[_Job], noises: list[torch.Tensor | None]) -> Guidance | None:
        if all(j.request.guide_audio is None for j in jobs):
            return None
        target = self._encode([j.request.guide_audio for j in jobs], noises)
        weight = torch.zeros((len(jobs), 1, self.cfg.latent_length), device=self.device)
        for i, job in enumerate(jobs):
            if job.request.guide_audio is not None:
                mask = self._latent_mask(job.request.guide_mask, job.request.guide_audio.shape[-1])
                weight[i, 0] = mask.pow(2) * float(job.request.guide_strength)
        return Guidance(target, weight)

    def _latent_mask(self, mask: torch.Tensor | None, audio_len: int) -> torch.Tensor:
        frames, ratio = self.cfg.latent_length, self.cfg.vae.downsampling_ratio
        if mask is None:
            mask = torch.ones(min(audio_len, self.cfg.sample_size))
        mask = mask.detach().float().flatten().to(self.device)
        if mask.numel() == frames:
            return mask.clamp(0, 1)
        full = mask.new_zeros(self.cfg.sample_size)
        length = min(mask.numel(), self.cfg.sample_size)
        full[:length] = mask[:length]
        return F.avg_pool1d(full[None, None], ratio, ratio)[0, 0].clamp(0, 1)


def finetune_config_candidates(checkpoint: str) -> list[str]:
    """Config files a fine-tune repo may carry, in the original's order of preference."""
    import re

    stem = checkpoint.rsplit(".", 1)[0]
    names = []
    match = re.match(r"^(acid_v\d+)_", checkpoint)
    if match:
        v = match.group(1)
        names += [f"{stem}_model_config.json", f"{v}_base_model_config.json", f"{v}_model_config.json",
                  f"{v}_config.json"]
    return names + ["base_model_config.json", CONFIG_FILE]


def _weights_file(folder: Path) -> Path:
    for name in WEIGHT_FILES:
        if (folder / name).exists():
            return folder / name
    raise ModelLoadError(ErrorCode.MODEL_NOT_FOUND, f"{folder} has neither {' nor '.join(WEIGHT_FILES)}")


def _guarded(progress: Progress | None) -> Progress:
    """The caller's progress callback; one that fails is logged, never allowed to fail the audio."""
    def report(step: int, total: int) -> None:
        if progress is None:
            return
        try:
            progress(step, total)
        except Exception:
            log.exception("progress callback failed")

    return report
