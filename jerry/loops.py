"""Loop-guided generation masks: which latent frames of the guide riff the sampler is pulled towards.

The mask lives on the latent time axis (one frame per `downsampling` audio samples). Unlike the original, which
took `T // bars` frames of the whole window as "the first bar", bar boundaries come from the tempo, so `first_bar`
really covers one bar whatever the loop length.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from .bpm import LoopPlan

GuidanceMask = Literal["first_bar", "full", "fade"]
FADE_FLOOR = 0.3


def guidance_mask(
    mode: GuidanceMask,
    plan: LoopPlan,
    *,
    latent_frames: int,
    downsampling: int,
    start_weight: float | None = None,
    end_weight: float | None = None,
) -> torch.Tensor:
    """[latent_frames] float32 weights in [0, max(start, end)]: the shape of `mode` times a start->end ramp.

    `first_bar`: 1 on the first bar, 0 after; `full`: 1 everywhere; `fade`: 1 on the first bar, then a linear decay
    to 0.3 at the end of the loop (and 0.3 past it). Frames after the loop are never weighted above the floor.
    """
    bar_frames = max(1, min(latent_frames, math.ceil(plan.seconds_per_bar * plan.sample_rate / downsampling)))
    loop_frames = max(bar_frames, min(latent_frames, math.ceil(plan.samples / downsampling)))
    if mode == "full":
        base = torch.ones(latent_frames)
    elif mode == "fade":
        base = torch.full((latent_frames,), FADE_FLOOR)
        base[:bar_frames] = 1.0
        if loop_frames > bar_frames:
            base[bar_frames:loop_frames] = torch.linspace(1.0, FADE_FLOOR, loop_frames - bar_frames)
    else:
        base = torch.zeros(latent_frames)
        base[:bar_frames] = 1.0
    start = 1.0 if start_weight is None else float(start_weight)
    end = start if end_weight is None else float(end_weight)
    ramp = torch.linspace(start, end, latent_frames) if start != end else torch.full((latent_frames,), start)
    return (base * ramp).to(torch.float32)
