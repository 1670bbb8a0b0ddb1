"""Conditioners: T5 prompt tokens and the `seconds_total` number embedding.

The number embedder's weights live in the checkpoint (`conditioner.conditioners.seconds_total.embedder...`); T5 is
loaded separately through `garycommon.textenc` (the checkpoint only names it).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .config import ConditionerConfig, SAOConfig
from .t5 import T5EncoderForward


class LearnedFourier(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weights = nn.Parameter(torch.randn(dim // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, None]
        freqs = x * self.weights[None, :] * 2 * math.pi
        return torch.cat((x, freqs.sin(), freqs.cos()), dim=-1)


class NumberEmbedder(nn.Module):
    def __init__(self, features: int, dim: int = 256) -> None:
        super().__init__()
        self.embedding = nn.Sequential(LearnedFourier(dim), nn.Linear(dim + 1, features))


class NumberConditioner(nn.Module):
    """A float clamped to [min, max], scaled to [0, 1] and embedded to one token of `cond_dim`."""

    def __init__(self, cfg: ConditionerConfig, cond_dim: int) -> None:
        super().__init__()
        self.min_val, self.max_val = cfg.min_val, cfg.max_val
        self.embedder = NumberEmbedder(cond_dim)

    def forward(self, values: list[float], device: torch.device) -> torch.Tensor:
        """-> [B, 1, cond_dim]"""
        x = torch.tensor([float(v) for v in values], device=device).clamp(self.min_val, self.max_val)
        x = (x - self.min_val) / (self.max_val - self.min_val)
        weight = self.embedder.embedding[1].weight
        return self.embedder.embedding(x.to(weight.dtype))[:, None, :]


class Conditioners(nn.Module):
    """`conditioner`: number conditioners by id (T5 encoders are held by the engine, outside the state dict)."""

    def __init__(self, cfg: SAOConfig) -> None:
        super().__init__()
        self.conditioners = nn.ModuleDict(
            {c.id: NumberConditioner(c, cfg.cond_dim) for c in cfg.conditioners if c.type == "number"}
        )


class T5Prompt:
    """Tokenise to exactly `max_length` tokens and encode; padded positions are zeroed, as in training."""

    def __init__(self, tokenizer: Any, encoder: Any, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.encoder = encoder
        self.max_length = max_length
        self.forward = T5EncoderForward(encoder)
        # Swapped by the CUDA fast path for a graph replay of the same forward.
        self.encode_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = self.forward

    @torch.no_grad()
    def __call__(self, texts: list[str], device: torch.device) -> torch.Tensor:
        tok = self.tokenizer(texts, truncation=True, max_length=self.max_length, padding="max_length",
                             return_tensors="pt")
        ids = tok["input_ids"].to(device, non_blocking=True)
        mask = tok["attention_mask"].to(device, non_blocking=True).bool()
        hidden = self.encode_fn(ids, mask)
        return hidden * mask[..., None].to(hidden.dtype)
