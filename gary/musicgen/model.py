"""One loaded MusicGen: LM + EnCodec + text conditioner on a device, and the request -> audio pipeline around them."""

from __future__ import annotations

import dataclasses
import functools
import secrets
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from garycommon.audio import resample
from garycommon.errors import ErrorCode, GaryError, ModelLoadError

from .checkpoint import COMPRESSION_FILE, LM_FILE, compression_config, config_dict, lm_config, load_pickle
from .conditioning import TextCondition, TextConditioner
from .encodec import Encodec, StereoInterleaved, build_compression
from .generate import Job, Progress, TokensSoFar, generate_eager
from .lm import Attention, MusicGenLM, build_lm
from .sampling import token_keys
from .types import GenerationRequest, GenerationResult, Partial

T5Provider = Callable[[str], tuple[object, torch.nn.Module]]
MAX_DURATION_S = 300.0  # longest output accepted (generated window by window past the model's own length)
EXTEND_STRIDE = 0.6  # audiocraft's extend_stride (18 s) as a fraction of its 30 s window


def extension_plan(duration: float, window_s: float, stride_s: float, frame_rate: int,
                   prompt_frames: int) -> list[tuple[int, int]]:
    """(prompt frames, frames) of each window of audiocraft's long generation, with its float arithmetic."""
    total = int(duration * frame_rate)
    stride = int(frame_rate * stride_s)
    plan: list[tuple[int, int]] = []
    offset, plen = 0, prompt_frames
    while offset + plen < total:
        frames = int(min(duration - offset / frame_rate, window_s) * frame_rate)
        plan.append((plen, frames))
        plen, offset = frames - stride, offset + stride
    return plan


def convert_channels(wav: torch.Tensor, channels: int) -> torch.Tensor:
    """audiocraft's rule: average to mono, repeat mono, or keep the first channels."""
    src = wav.shape[-2]
    if src == channels:
        return wav
    if channels == 1:
        return wav.mean(dim=-2, keepdim=True)
    if src == 1:
        return wav.expand(*wav.shape[:-2], channels, wav.shape[-1])
    if src > channels:
        return wav[..., :channels, :]
    raise GaryError(ErrorCode.VALIDATION_ERROR, f"prompt has {src} channels, cannot make {channels}")


class PackedLinear(nn.Module):
    """A bf16 linear on a CPU whose weight oneDNN laid out once for its AMX / AVX512-BF16 kernels. Given a plain
    weight, those kernels reorder all of it on every call: a decode step (2 rows x every weight) pays ~15% for that.
    Replaces the plain weight (no second copy); any number of rows works (the layout is chosen for 2)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.nbytes = weight.numel() * weight.element_size()
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), 2)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


@functools.lru_cache(maxsize=1)
def cpu_packing_works() -> bool:
    """oneDNN's packed bf16 linear is there and agrees with F.linear (a torch build without it keeps plain weights)."""
    try:
        gen = torch.Generator().manual_seed(0)
        w, x = torch.randn(64, 48, generator=gen).bfloat16(), torch.randn(3, 48, generator=gen).bfloat16()
        return bool(torch.allclose(PackedLinear(w, None)(x).float(), F.linear(x, w).float(), rtol=1e-2, atol=1e-2))
    except (AttributeError, RuntimeError):
        return False


def _pack_projection(att: Attention, parts: list[slice]) -> None:
    """Packed copies of the q/k/v rows `parts` of a packed-projection attention; other parts stay plain."""
    packed = {(p.start, p.stop): PackedLinear(att.in_proj_weight[p],
                                              None if att.in_proj_bias is None else att.in_proj_bias[p]) for p in parts}
    att.packed_parts = nn.ModuleList(packed.values())  # visible to .modules() (param_bytes)
    plain = att.project

    def project(x: torch.Tensor, part: slice) -> torch.Tensor:
        lin = packed.get((part.start, part.stop))
        return lin(x) if lin is not None else plain(x, part)

    att.project = project  # type: ignore[method-assign]


def pack_for_cpu(lm: MusicGenLM) -> bool:
    """bf16 LM on a CPU: every weight a decode step reads goes to oneDNN's layout once (the nn.Linear modules are
    replaced; the self-attention's q/k/v and the cross-attention's q rows get packed copies). False: left plain."""
    if not cpu_packing_works():
        return False
    dim = lm.cfg.dim
    for layer in lm.transformer.layers:
        layer.linear1 = PackedLinear(layer.linear1.weight, layer.linear1.bias)
        layer.linear2 = PackedLinear(layer.linear2.weight, layer.linear2.bias)
        for att, parts in ((layer.self_attn, [slice(0, 3 * dim)]), (layer.cross_attention, [slice(0, dim)])):
            if att is None:
                continue
            _pack_projection(att, parts)
            att.out_proj = PackedLinear(att.out_proj.weight, att.out_proj.bias)
    for k, lin in enumerate(lm.linears):
        lm.linears[k] = PackedLinear(lin.weight, lin.bias)
    return True


class MusicGenModel:
    """A resident model. `generate` runs a batch of requests for this model (blocking)."""

    def __init__(self, name: str, lm: MusicGenLM, codec: Encodec | StereoInterleaved, text: TextConditioner | None,
                 device: torch.device, dtype: torch.dtype) -> None:
        self.name = name
        self.lm = lm
        self.codec = codec
        self.text = text
        self.device = device
        self.dtype = dtype
        self.sample_rate = codec.sample_rate
        self.channels = codec.channels
        self.frame_rate = codec.frame_rate
        self.max_duration = lm.cfg.segment_duration
        self.keys = token_keys(lm.cfg.n_q, lm.cfg.card, device)
        self.fast = None  # set by the engine when the CUDA fast path is available
        self.packed = device.type == "cpu" and dtype == torch.bfloat16 and pack_for_cpu(lm)

    @classmethod
    def load(cls, name: str, folder: Path, device: torch.device, dtype: torch.dtype, t5: T5Provider) -> MusicGenModel:
        lm_pkg = load_pickle(folder / LM_FILE)
        comp_pkg = load_pickle(folder / COMPRESSION_FILE)
        if "pretrained" in comp_pkg:
            raise ModelLoadError(
                ErrorCode.MODEL_LOAD_FAILED,
                f"{name}: its compression model points at {comp_pkg['pretrained']!r}; only bundled EnCodec is supported",
            )
        lm_cfg = lm_config(config_dict(lm_pkg, f"{name}/{LM_FILE}"))
        comp_cfg = compression_config(config_dict(comp_pkg, f"{name}/{COMPRESSION_FILE}"))
        lm, cond_state = build_lm(lm_cfg, lm_pkg["best_state"])
        codec = build_compression(comp_cfg, comp_pkg["best_state"], stereo_interleaved=lm_cfg.stereo_interleaved,
                                  n_q=lm_cfg.compression_n_q)
        if codec.num_codebooks != lm_cfg.n_q:
            raise ModelLoadError(ErrorCode.MODEL_LOAD_FAILED,
                                 f"{name}: LM models {lm_cfg.n_q} codebooks, EnCodec gives {codec.num_codebooks}")
        text = None
        if lm_cfg.t5_name is not None:
            tokenizer, encoder = t5(lm_cfg.t5_name)
            text = TextConditioner(tokenizer, encoder, cond_state, lm_cfg.dim).to(device)
        lm.to(device=device, dtype=dtype)
        codec.to(device)
        del lm_pkg, comp_pkg
        return cls(name, lm, codec, text, device, dtype)

    def param_bytes(self) -> int:
        mods = [self.lm, self.codec]
        packed = sum(m.nbytes for m in self.lm.modules() if isinstance(m, PackedLinear))
        return packed + sum(p.numel() * p.element_size() for m in mods for p in m.parameters())

    @torch.no_grad()
    def encode_prompt(self, prompt: torch.Tensor, sr: int) -> torch.Tensor:
        """[C, T] at sr -> codes [K, P]."""
        if prompt.dim() != 2 or prompt.shape[-1] == 0:
            raise GaryError(ErrorCode.AUDIO_EMPTY, "prompt must be a non-empty [channels, samples] tensor")
        wav = resample(prompt.to(torch.float32), int(sr), self.sample_rate)
        wav = convert_channels(wav, self.channels).unsqueeze(0).to(self.device)
        return self.codec.encode(wav)[0]

    def to_job(self, req: GenerationRequest) -> tuple[Job, int]:
        frames = int(req.duration * self.frame_rate)
        if frames <= 0 or req.duration > MAX_DURATION_S:
            raise GaryError(ErrorCode.VALIDATION_ERROR,
                            f"duration must be in (0, {MAX_DURATION_S:g}] s, got {req.duration:g}")
        if req.prompt is not None:
            codes = self.encode_prompt(req.prompt, req.prompt_sr)
            window = min(req.duration, self.max_duration)
            if codes.shape[-1] >= int(window * self.frame_rate):
                raise GaryError(ErrorCode.VALIDATION_ERROR,
                                f"prompt ({codes.shape[-1] / self.frame_rate:.2f} s) must be shorter than the "
                                f"duration and the model's {self.max_duration:g} s window ({window:g} s)")
        else:
            codes = torch.zeros(self.lm.cfg.n_q, 0, dtype=torch.long, device=self.device)
        seed = req.seed if req.seed is not None else secrets.randbits(63)
        if self.text is not None:
            cond = self.text.encode(req.description)
        else:
            cond = TextCondition(torch.zeros(1, self.lm.cfg.dim, device=self.device), False)
        job = Job(codes, frames, cond, float(req.temperature), int(req.top_k), float(req.top_p),
                  float(req.cfg_coef), int(seed))
        return job, int(seed)

    def _run(self, jobs: list[Job], progress: Progress | None, tokens_so_far: TokensSoFar | None = None,
             every: int = 0) -> list[torch.Tensor]:
        if self.fast is not None:
            return self.fast.generate(jobs, progress, tokens_so_far, every)
        return generate_eager(self.lm, jobs, self.dtype, self.keys, progress, tokens_so_far, every)

    @torch.no_grad()
    def generate(self, requests: list[GenerationRequest], progress: Callable[[int, int], None] | None = None,
                 partial: Partial | None = None, partial_seconds: float = 0.0) -> list[GenerationResult]:
        """Requests within the model's window run as one batch; longer ones are extended window by window after.

        `partial`: every `partial_seconds` of generated audio, each request's audio so far (decoded from the tokens
        complete in every codebook) for clients that start playing before the end; single-window requests only."""
        prepared = [self.to_job(r) for r in requests]
        window = int(self.max_duration * self.frame_rate)
        short = [i for i, (j, _) in enumerate(prepared) if j.frames <= window]
        codes: dict[int, torch.Tensor] = {}
        if short:
            hook, every = None, 0
            if partial is not None and partial_seconds > 0:
                every = max(1, int(round(partial_seconds * self.frame_rate)))

                def hook(so_far: list[torch.Tensor], _frames: int) -> None:
                    for row, audio in enumerate(self.decode(so_far)):
                        partial(short[row], audio, self.sample_rate)

            codes.update(zip(short, self._run([prepared[i][0] for i in short], progress, hook, every), strict=True))
        for i, req in enumerate(requests):
            if i not in codes:
                codes[i] = self._extend(prepared[i][0], req.duration, progress)
        audio = self.decode([codes[i] for i in range(len(requests))])
        return [GenerationResult(a, self.sample_rate, seed) for a, (_, seed) in zip(audio, prepared, strict=True)]

    def _extend(self, job: Job, duration: float, progress: Progress | None) -> torch.Tensor:
        """audiocraft's long generation: windows of the model's length, each continuing the last (window - stride)
        seconds of the previous one, the stride being 18 s for 30 s models (kept proportional for others)."""
        plan = extension_plan(duration, self.max_duration, EXTEND_STRIDE * self.max_duration, self.frame_rate,
                              job.prompt.shape[-1])
        delay = self.lm.cfg.max_delay
        total = sum(frames + delay - plen for plen, frames in plan)
        done = 0
        stride = int(self.frame_rate * EXTEND_STRIDE * self.max_duration)
        prompt = job.prompt
        pieces = [prompt.cpu()] if prompt.shape[-1] else []  # the fast path hands codes back on the host
        for w, (_, frames) in enumerate(plan):
            seed = (job.seed + w * 0x9E3779B97F4A7C15) & ((1 << 63) - 1)  # fresh noise per window
            sub = dataclasses.replace(job, prompt=prompt, frames=frames, seed=seed)
            report = None if progress is None else (lambda s, _t, base=done: progress(base + s, total))
            out = self._run([sub], report)[0]
            pieces.append(out[:, prompt.shape[-1]:].cpu())  # the window's own prompt is already in `pieces`
            done += frames + delay - prompt.shape[-1]
            prompt = out[:, stride:]
        return torch.cat(pieces, dim=-1)

    @torch.no_grad()
    def decode(self, codes: list[torch.Tensor]) -> list[torch.Tensor]:
        """Codes [K, T] per request -> audio [C, T*hop] float32 on CPU, batching equal lengths."""
        out: list[torch.Tensor | None] = [None] * len(codes)
        by_len: dict[int, list[int]] = {}
        for i, c in enumerate(codes):
            by_len.setdefault(c.shape[-1], []).append(i)
        for idx in by_len.values():
            audio = self.codec.decode(torch.stack([codes[i] for i in idx]).to(self.device))
            for row, i in enumerate(idx):
                out[i] = audio[row].float().cpu()
        return [a for a in out if a is not None]
