"""Token sampling with audiocraft's semantics (temperature, then top-p if > 0, else top-k if > 0, else full softmax;
greedy when temperature <= 0), vectorised over rows that each carry their own parameters and seed.

Randomness is counter-based: the draw for (seed, sequence position, codebook, token) is a fixed hash of those four
numbers, turned into an exponential variate E, and the sampled token is argmax(p / E) -- an exact sample from p
(the "exponential race"). Nothing is stateful, so a request's tokens depend only on its seed and inputs: identical
across runs, batch positions and batch compositions, and the whole step can be captured in a CUDA graph (no
torch.Generator state to advance, no host synchronisation).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_M32 = 0xFFFFFFFF


def _mix(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer finaliser (xorshift-multiply) on int64 tensors holding uint32 values."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _M32
    return x ^ (x >> 16)


def token_keys(n_q: int, card: int, device: torch.device) -> torch.Tensor:
    """Per-(codebook, token) hash keys [K, card], computed once per model."""
    idx = torch.arange(n_q * card, device=device, dtype=torch.int64).view(n_q, card)
    return _mix((idx * 0x9E3779B1 + 0x27D4EB2F) & _M32)


def seed_keys(seeds: torch.Tensor) -> torch.Tensor:
    """int64 seeds [B] -> 32-bit keys [B] using all 64 bits of the seed."""
    lo = seeds & _M32
    hi = (seeds >> 32) & _M32
    return _mix(lo ^ _mix((hi + 0x165667B1) & _M32))


def exponential_noise(seed_key: torch.Tensor, position: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Exp(1) variates [B, K, card] for rows with 32-bit seed keys [B] drawing for sequence positions [B]."""
    row = _mix(seed_key ^ ((position * 0x85EBCA77) & _M32))
    bits = _mix(row.view(-1, 1, 1) ^ keys.unsqueeze(0))
    u = ((bits >> 8).to(torch.float32) + 0.5) * (1.0 / (1 << 24))
    return -torch.log(u)


@dataclass
class SamplingParams:
    """Per-row parameters as tensors [B] on the sampling device, plus two static facts about the batch that pick the
    cheapest exact code path (a graph is captured per batch, so they never change under it)."""

    temperature: torch.Tensor  # float32
    top_k: torch.Tensor  # int64, <= 0: off
    top_p: torch.Tensor  # float32, <= 0: off
    cfg_coef: torch.Tensor  # float32
    seed_key: torch.Tensor  # int64 (32-bit values)
    max_top_k: int  # largest top_k of the batch (0: no row uses top-k)
    any_top_p: bool

    @classmethod
    def build(cls, temperature: list[float], top_k: list[int], top_p: list[float], cfg_coef: list[float],
              seeds: list[int], device: torch.device) -> SamplingParams:
        return cls(
            torch.tensor(temperature, dtype=torch.float32, device=device),
            torch.tensor(top_k, dtype=torch.int64, device=device),
            torch.tensor(top_p, dtype=torch.float32, device=device),
            torch.tensor(cfg_coef, dtype=torch.float32, device=device),
            seed_keys(torch.tensor([s & ((1 << 63) - 1) for s in seeds], dtype=torch.int64, device=device)),
            max(0, *top_k),
            any(p > 0 for p in top_p),
        )


def sample(logits: torch.Tensor, params: SamplingParams, position: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """logits [B, K, card] float32 -> tokens [B, K] for sequence positions [B]."""
    card = logits.shape[-1]
    greedy = (params.temperature <= 0).view(-1, 1)
    temp = torch.where(params.temperature > 0, params.temperature, torch.ones_like(params.temperature))
    probs = torch.softmax(logits / temp.view(-1, 1, 1), dim=-1)
    if params.any_top_p:
        sorted_p, order = torch.sort(probs, dim=-1, descending=True)
    elif params.max_top_k > 0:
        sorted_p = torch.topk(probs, min(params.max_top_k, card), dim=-1).values  # all a top-k needs
    keep = torch.ones_like(probs, dtype=torch.bool)
    if params.max_top_k > 0:
        # top-k keeps every token at least as probable as the k-th (audiocraft compares values: ties stay in).
        kth_index = (params.top_k.clamp(1, sorted_p.shape[-1]) - 1).view(-1, 1, 1).expand(-1, probs.shape[1], 1)
        keep = (probs >= sorted_p.gather(-1, kth_index)) | (params.top_k <= 0).view(-1, 1, 1)
    if params.any_top_p:
        # top-p keeps the smallest prefix of the sorted distribution whose mass before each token is <= p.
        drop_sorted = (torch.cumsum(sorted_p, dim=-1) - sorted_p) > params.top_p.view(-1, 1, 1)
        keep_p = torch.zeros_like(drop_sorted).scatter(-1, order, ~drop_sorted)
        keep = torch.where((params.top_p > 0).view(-1, 1, 1), keep_p, keep)
    noise = exponential_noise(params.seed_key, position, keys)
    drawn = torch.argmax(torch.where(keep, probs, torch.zeros_like(probs)) / noise, dim=-1)
    return torch.where(greedy, torch.argmax(logits, dim=-1), drawn)
