"""The flow ODE solvers MelodyFlow edits with (audiocraft fork `FlowModel.generate`, re-derived).

Convention: t = 0 is noise, t = 1 is data. An edit inverts the clean latent from 1 down to `flowstep` (no guidance)
and integrates back up to 1 under the text prompt (guided). Lower flowstep = more change.

* Schedule: `steps + 1` float32 points from 0 to 1 (1 to 0 for inversion), sway-warped
  `s + c (cos(pi s / 2) - 1 + s)` with c = -0.8, then mapped affinely onto [flowstep, 1].
* Euler: `x += v dt`. Midpoint (even step counts): even steps store `x + v dt`, odd steps evaluate there and move
  `x += v (s[i+1] - s[i-1])`.
* Regularised euler (the inversion terry uses): each step evaluates `iters` times at s[i+1] — first at x, then at
  `x + v dt` — and the last `keep_last` evaluations also run a re-noised copy `(1-s) eps + s x0 + 1e-5 eps'`, pulling v
  toward that copy's velocity by 4 clipped gradient steps (lr `lambda_kl`) on a patch-wise Gaussian KL; the step then
  uses the weighted mean of the refined velocities. The gradient is written out analytically (no autograd), so it runs
  under inference mode and inside CUDA-graph-friendly code; `tests/terry_melodyflow` checks it against autograd.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

SWAY = -0.8
KL_EPS = 1e-6
KL_STEPS = 4
GRAD_CLIP = 100.0

Velocity = Callable[[torch.Tensor, float], torch.Tensor]
StepCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class Regularization:
    iters: int = 2
    keep_last: int = 1
    lambda_kl: float = 0.2


def schedule(steps: int, source: float, target: float) -> torch.Tensor:
    """The `steps + 1` flow times from `source` to `target` (float32, exactly as the original builds them)."""
    forward = target > source
    s = torch.arange(0, 1 + 1e-5, 1 / steps) if forward else torch.arange(1, 0 - 1e-5, -1 / steps)
    s = s + SWAY * (torch.cos(math.pi * 0.5 * s) - 1 + s)
    lo, hi = (source, target) if forward else (target, source)
    return s * (hi - lo) + lo


def kl_gradient(v: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """d/dv of sum over 4x4 (channel x frame) patches of |KL(N(mu_v, var_v) || N(mu_t, var_t))|.

    Frames beyond a multiple of 4 (and channels beyond a multiple of 4) are in no patch and get zero gradient.
    """
    b, c, t = v.shape
    cp, tp = c // 4 * 4, t // 4 * 4
    grad = torch.zeros_like(v)
    if cp == 0 or tp == 0:
        return grad
    a = v[:, :cp, :tp].reshape(b, cp // 4, 4, tp // 4, 4)
    y = target[:, :cp, :tp].reshape(b, cp // 4, 4, tp // 4, 4)
    n = 16
    mu0, mu1 = a.mean(dim=(2, 4), keepdim=True), y.mean(dim=(2, 4), keepdim=True)
    var0 = (a - mu0).pow(2).sum(dim=(2, 4), keepdim=True) / (n - 1)
    var1 = (y - mu1).pow(2).sum(dim=(2, 4), keepdim=True) / (n - 1)
    kl = torch.log((var1 + KL_EPS) / (var0 + KL_EPS)) + (var0 + (mu0 - mu1).pow(2)) / (var1 + KL_EPS) - 1
    d_var = 1 / (var1 + KL_EPS) - 1 / (var0 + KL_EPS)
    d_mu = 2 * (mu0 - mu1) / (var1 + KL_EPS)
    g = torch.sign(kl) * (d_var * 2 * (a - mu0) / (n - 1) + d_mu / n)
    grad[:, :cp, :tp] = g.reshape(b, cp, tp)
    return grad


def regularize_velocity(v: torch.Tensor, target: torch.Tensor, lambda_kl: float) -> torch.Tensor:
    for _ in range(KL_STEPS):
        v = v - lambda_kl * kl_gradient(v, target).clamp(-GRAD_CLIP, GRAD_CLIP)
    return v


def integrate(
    velocity: Velocity,
    x: torch.Tensor,
    source: float,
    target: float,
    *,
    solver: str,
    steps: int,
    regularization: Regularization | None = None,
    x0: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    on_step: StepCallback | None = None,
) -> torch.Tensor:
    """Integrate dx/dt = velocity(x, t) from `source` to `target`; `velocity` handles any number of rows."""
    if solver not in ("euler", "midpoint"):
        raise ValueError(f"unknown solver {solver!r}")
    if solver == "midpoint" and (steps % 2 or regularization is not None):
        raise ValueError("midpoint needs an even step count and no regularization")
    if regularization is not None and x0 is None:
        raise ValueError("regularized inversion needs the clean latent x0")
    sched = schedule(steps, source, target)
    times = [float(v) for v in sched]
    iters = regularization.iters if regularization else 1
    keep = regularization.keep_last if regularization else 0
    threshold = iters - keep
    denominator = keep * threshold + sum(range(keep))
    rows = x.shape[0]
    pending: torch.Tensor | None = None
    for idx in range(steps):
        dt = float(sched[idx + 1] - sched[idx])
        current = pending if solver == "midpoint" and idx % 2 == 1 else x
        assert current is not None
        t_eval = times[idx + 1] if regularization else times[idx]
        v = current
        avg = torch.zeros_like(x) if regularization else None
        probe = current
        for jdx in range(iters):
            with_kl = jdx >= threshold
            if with_kl:
                assert x0 is not None and regularization is not None and avg is not None
                s_next = float(sched[idx + 1])
                eps = torch.randn(probe.shape, generator=generator, device=probe.device, dtype=probe.dtype)
                tiny = torch.randn(probe.shape, generator=generator, device=probe.device, dtype=probe.dtype)
                renoised = (1 - s_next) * eps + s_next * x0 + 1e-5 * tiny
                both = velocity(torch.cat([probe, renoised]), t_eval)
                v, v_ref = both[:rows], both[rows:]
                v = regularize_velocity(v, v_ref, regularization.lambda_kl)
                avg = avg + v * jdx / denominator
            else:
                v = velocity(probe, t_eval)
            probe = x + v * dt
            if on_step is not None:
                on_step(1 + idx * iters + jdx, steps * iters)
        if regularization:
            assert avg is not None
            v = avg
        if solver == "midpoint":
            if idx % 2 == 0:
                pending = x + v * dt
            else:
                x = x + v * float(sched[idx + 1] - sched[idx - 1])
        else:
            x = x + v * dt
    return x
