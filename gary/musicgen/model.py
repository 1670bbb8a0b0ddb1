"""One loaded MusicGen: LM + EnCodec + text conditioner on a device, and the request -> audio pipeline around them."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from pathlib import Path

import torch
from garycommon.audio import resample
from garycommon.errors import ErrorCode, GaryError, ModelLoadError

from .checkpoint import COMPRESSION_FILE, LM_FILE, compression_config, config_dict, lm_config, load_pickle
from .conditioning import TextCondition, TextConditioner
from .encodec import Encodec, StereoInterleaved, build_compression
from .generate import Job, generate_eager
from .lm import MusicGenLM, build_lm
from .sampling import token_keys
from .types import GenerationRequest, GenerationResult

log = logging.getLogger(__name__)

T5Provider = Callable[[str], tuple[object, torch.nn.Module]]


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
        return sum(p.numel() * p.element_size() for m in mods for p in m.parameters())

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
        if frames <= 0 or req.duration > self.max_duration:
            raise GaryError(ErrorCode.VALIDATION_ERROR,
                            f"duration must be in (0, {self.max_duration:g}] s for {self.name}, got {req.duration:g}")
        if req.prompt is not None:
            codes = self.encode_prompt(req.prompt, req.prompt_sr)
            if codes.shape[-1] >= frames:
                raise GaryError(ErrorCode.VALIDATION_ERROR,
                                f"prompt ({codes.shape[-1] / self.frame_rate:.2f} s) must be shorter than the "
                                f"duration ({req.duration:g} s)")
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

    @torch.no_grad()
    def generate(self, requests: list[GenerationRequest],
                 progress: Callable[[int, int], None] | None = None) -> list[GenerationResult]:
        prepared = [self.to_job(r) for r in requests]
        jobs = [j for j, _ in prepared]
        if self.fast is not None:
            codes = self.fast.generate(jobs, progress)
        else:
            codes = generate_eager(self.lm, jobs, self.dtype, self.keys, progress)
        return [GenerationResult(audio, self.sample_rate, seed)
                for audio, (_, seed) in zip(self.decode(codes), prepared, strict=True)]

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
