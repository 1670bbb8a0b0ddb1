"""Inputs longer than the model's 30 s window: overlapping full-length windows, stitched with crossfades.

Every window is exactly the model window (750 latent frames), so no window is padded and the model always sees the
context length it was trained on. `n = ceil((T - overlap) / (window - overlap))` windows are spread evenly from 0 to
`T - window`, so neighbours overlap by at least `min_overlap` samples (often more). Each window is edited on its own
(same prompt, seed stream continues); in every overlap the earlier window fades out and the later fades in with
complementary raised-cosine ramps. The overlap-add is divided by the summed weights, so the mix stays at unit gain
even where three windows meet.
"""

from __future__ import annotations

import math

import torch


def plan(total: int, window: int, min_overlap: int) -> list[int]:
    """Window start offsets (samples) covering [0, total) with windows of length `window`."""
    if total <= window:
        return [0]
    if not 0 <= min_overlap < window:
        raise ValueError("overlap must be shorter than the window")
    n = math.ceil((total - min_overlap) / (window - min_overlap))
    n = max(n, 2)
    return [round(i * (total - window) / (n - 1)) for i in range(n)]


def _ramp(length: int, device: torch.device) -> torch.Tensor:
    k = torch.arange(length, device=device, dtype=torch.float32)
    return 0.5 - 0.5 * torch.cos(math.pi * (k + 0.5) / length)


def stitch(pieces: list[torch.Tensor], starts: list[int], total: int) -> torch.Tensor:
    """Overlap-add [C, window] pieces at `starts` into [C, total] with complementary crossfades."""
    if len(pieces) == 1:
        return pieces[0][..., :total]
    channels, window = pieces[0].shape
    device = pieces[0].device
    out = torch.zeros(channels, total, device=device, dtype=torch.float32)
    norm = torch.zeros(total, device=device, dtype=torch.float32)
    for i, (piece, start) in enumerate(zip(pieces, starts, strict=True)):
        weight = torch.ones(window, device=device)
        if i > 0:
            overlap = starts[i - 1] + window - start
            weight[:overlap] *= _ramp(overlap, device)
        if i < len(pieces) - 1:
            overlap = start + window - starts[i + 1]
            weight[window - overlap :] *= 1 - _ramp(overlap, device)
        out[:, start : start + window] += piece.float() * weight
        norm[start : start + window] += weight
    return out / norm
