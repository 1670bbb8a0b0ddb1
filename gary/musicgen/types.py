"""Request/result types of the MusicGen engine (the interface gary's service codes against)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

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


class ModelSource(Protocol):
    """Where the engine's files come from, and so what it may load: the service hands the engine one (gary's is
    gary.catalog.AllowedModels: allow-list, demo stand-ins); the engine itself knows no model names."""

    def checkpoint(self, name: str) -> Path:
        """The folder holding `name`'s state_dict.bin and compression_state_dict.bin (raises GaryError if refused)."""
        ...

    def text_encoder(self, name: str) -> str:
        """What garycommon.textenc.load_t5 loads for the T5 a checkpoint's config names."""
        ...

    def size(self, name: str) -> str:
        """small | medium | large: the MusicGen size `name` was trained from, for VRAM estimates before it is loaded."""
        ...
