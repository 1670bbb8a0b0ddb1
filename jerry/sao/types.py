"""Request/result types of the SAO engine and `SAOModel`, the part of `SAOEngine` jerry's service codes against."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from .config import SAOConfig

Progress = Callable[[int, int], None]  # (step, steps)


@dataclass
class SAORequest:
    prompt: str
    negative_prompt: str | None = None
    seconds_total: float = 11.0
    steps: int = 8
    cfg_scale: float = 1.0
    seed: int | None = None  # None or -1 -> random, reported back
    sampler_type: str = "pingpong"  # pingpong | euler
    init_audio: torch.Tensor | None = None  # [2, T] at 44.1 kHz: style transfer source
    init_noise_level: float | None = None  # style strength (t to start from); None -> 1.0 (init ignored)
    guide_audio: torch.Tensor | None = None  # [2, T] at 44.1 kHz: loop-guided inpainting reference
    guide_mask: torch.Tensor | None = None  # [T_latent] or [T] float mask, 1 = keep guide (None -> all ones)
    guide_strength: float = 1.0  # scales the mask (the original's guidance_strength)


@dataclass
class SAOResult:
    audio: torch.Tensor  # [2, sample_size] float32 at 44.1 kHz, full model window (caller trims)
    seed: int


class SAOModel(Protocol):
    """A loaded model: not thread-safe, so jerry calls `generate` and `warmup` on its one GPU worker thread only."""

    cfg: SAOConfig
    sample_rate: int
    demo: bool  # the weights carry the demo marker (tiny random weights)

    def generate(self, requests: Sequence[SAORequest], progress: Progress | None = None) -> list[SAOResult]:
        """Results in request order; requests with the same sampler settings run as one batch."""
        ...

    def warmup(self, batch_sizes: Sequence[int] = (1,)) -> None: ...
