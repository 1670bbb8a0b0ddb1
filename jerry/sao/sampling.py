"""Rectified-flow samplers with stable-audio-tools' time schedule, plus latent guidance for loop-guided generation.

Convention: x_t = (1 - t) x_0 + t noise, the network predicts v = noise - x_0, so denoised = x_t - t v.
Schedule: t = sigmoid(-linspace(logsnr_max, 2, steps + 1)), first value replaced by sigma_max, last by 0, where
logsnr_max = -6 for pure noise and log((1 - s) / s + 1e-6) when starting from init audio at strength s.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

SAMPLERS = ("pingpong", "euler")
GUIDE_T_MIN, GUIDE_T_MAX = 0.2, 0.999


def rf_schedule(steps: int, sigma_max: float = 1.0) -> torch.Tensor:
    """float32 [steps + 1] times from sigma_max down to 0."""
    sigma_max = min(sigma_max, 1.0)
    logsnr_max = math.log(((1 - sigma_max) / sigma_max) + 1e-6) if sigma_max < 1 else -6
    t = torch.sigmoid(-torch.linspace(logsnr_max, 2, steps + 1))
    t[0] = sigma_max
    t[-1] = 0
    return t


@dataclass
class Guidance:
    """Pull the denoised estimate toward `target` latents where `weight` ([B, 1, T], mask² × strength) is set.

    The original (Hawley-style) update was denoised -= strength (1-t)/t M² (denoised - target); its coefficient
    exceeds 1 late in sampling and overshoots past the target, so the blend weight is capped at 1 here. For euler
    the original pulled the *noise* estimate x + (1-t) v instead of the data estimate; both samplers now guide the
    data estimate (and euler converts the corrected estimate back to a velocity).
    """

    target: torch.Tensor
    weight: torch.Tensor

    def apply(self, denoised: torch.Tensor, t: float) -> torch.Tensor:
        if not GUIDE_T_MIN <= t <= GUIDE_T_MAX:
            return denoised
        coeff = (self.weight * ((1.0 - t) / max(t, 1e-4))).clamp(max=1.0)
        return denoised + coeff * (self.target - denoised)


Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@torch.no_grad()
def sample(
    velocity: Denoiser,
    x: torch.Tensor,
    t: torch.Tensor,
    sampler: str,
    step_noise: torch.Tensor | None,
    guidance: Guidance | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Run the sampler from x at t[0]; `velocity(x, t_vec)` returns v; `step_noise` [steps, *x.shape] for pingpong."""
    steps = len(t) - 1
    ones = x.new_ones([x.shape[0]])
    for i in range(steps):
        t_cur, t_next = t[i], t[i + 1]
        v = velocity(x, t_cur * ones)
        if sampler == "pingpong":
            denoised = x - t_cur * v
            if guidance is not None:
                denoised = guidance.apply(denoised, float(t_cur))
            assert step_noise is not None
            x = (1 - t_next) * denoised + t_next * step_noise[i]
        elif sampler == "euler":
            if guidance is not None and GUIDE_T_MIN <= float(t_cur) <= GUIDE_T_MAX:
                v = (x - guidance.apply(x - t_cur * v, float(t_cur))) / t_cur
            x = x + (t_next - t_cur) * v
        else:
            raise ValueError(f"unknown sampler {sampler!r}; use one of {SAMPLERS}")
        if progress is not None:
            progress(i + 1, steps)
    return x
