"""Request/result types of the MusicGen engine (the interface gary's service codes against)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class GenerationRequest:
    """One generation. `duration` is the total output length including the re-synthesised prompt (audiocraft's)."""

    model_name: str
    prompt: torch.Tensor | None  # [C, T] float32 at prompt_sr (any channels; mixed to the model's)
    prompt_sr: int = 32000
    duration: float = 30.0
    description: str | None = None
    top_k: int = 250
    top_p: float = 0.0
    temperature: float = 1.0
    cfg_coef: float = 3.0
    seed: int | None = None  # None -> the engine picks one and reports it


@dataclass
class GenerationResult:
    audio: torch.Tensor  # [C, T] float32 at sample_rate (C=1 mono models, 2 stereo models)
    sample_rate: int
    seed: int


# (index of the request in the call, its audio so far [C, T] float32 on the CPU, sample rate): called from the
# generating thread every few seconds of generated audio, for clients that play a long generation as it grows
Partial = Callable[[int, torch.Tensor, int], None]
