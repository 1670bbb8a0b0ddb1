"""Trained-in DiT details and solver pieces, checked without the fork (see test_parity_fork.py for fork parity)."""

from __future__ import annotations

import torch

from terry.melodyflow.checkpoint import DiTConfig
from terry.melodyflow.demo import random_dit, tiny_configs
from terry.melodyflow.dit import FlowDiT
from terry.melodyflow.solver import Regularization, integrate, kl_gradient, schedule


def test_skip_projection_order_is_the_trained_one() -> None:
    """24 layers: pushes after layers 0..10, pops at 13..23 through projections 2..10, 0, 1 (LIFO)."""
    model = FlowDiT(DiTConfig(dim=8, num_heads=1, num_layers=24, latent_dim=4, cond_dim=8))
    used: list[int] = []
    for k, proj in enumerate(model.transformer.skip_projections):
        proj.register_forward_hook(lambda *_a, k=k: used.append(k))
    with torch.no_grad():
        model(torch.randn(1, 4, 5), torch.tensor([0.5]))
    assert used == [2, 3, 4, 5, 6, 7, 8, 9, 10, 0, 1]


def test_null_prompt_cross_attention_is_exactly_zero() -> None:
    """All text masked: the zero-attention slot takes the softmax, so the masked path equals skipping cross-attention."""
    cfg, _ = tiny_configs()
    model = random_dit(cfg, seed=1).eval()
    z, t = torch.randn(2, 32, 20), torch.tensor([0.2, 0.9])
    cond, bias = model.project_text(torch.randn(2, 5, 768), torch.zeros(2, 5, dtype=torch.long))
    with torch.no_grad():
        masked = model(z, t, cond, bias)
        assert torch.isfinite(masked).all()
        assert torch.equal(masked, model(z, t))
        prompted, _ = model.project_text(torch.randn(2, 5, 768), torch.ones(2, 5, dtype=torch.long))
        assert not torch.allclose(model(z, t, prompted, torch.zeros_like(bias)), masked)


def test_timestep_and_input_scaling_matter() -> None:
    cfg, _ = tiny_configs()
    model = random_dit(cfg, seed=2).eval()
    z = torch.randn(1, 32, 12)
    with torch.no_grad():
        assert not torch.allclose(model(z, torch.tensor([0.1])), model(z, torch.tensor([0.6])))


def test_schedule_is_swayed_and_mapped() -> None:
    s = schedule(25, 0.12, 1.0)
    assert len(s) == 26 and abs(float(s[0]) - 0.12) < 1e-6 and abs(float(s[-1]) - 1.0) < 1e-6
    assert torch.all(s[1:] > s[:-1])
    # sway (c = -0.8) front-loads small steps near noise: the first interval is shorter than uniform
    assert float(s[1] - s[0]) < 0.88 / 25
    inv = schedule(25, 1.0, 0.12)
    assert abs(float(inv[0]) - 1.0) < 1e-6 and abs(float(inv[-1]) - 0.12) < 1e-6
    torch.testing.assert_close(inv.flip(0), s, atol=1e-5, rtol=0)


def test_kl_gradient_matches_autograd() -> None:
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(2, 32, 23, generator=gen, dtype=torch.float64)
    target = torch.randn(2, 32, 23, generator=gen, dtype=torch.float64) * 0.7 + 0.3
    var = v.clone().requires_grad_(True)
    a = var[:, :, :20].reshape(2, 8, 4, 5, 4)
    y = target[:, :, :20].reshape(2, 8, 4, 5, 4)
    mu0, mu1 = a.mean(dim=(2, 4)), y.mean(dim=(2, 4))
    v0, v1 = a.var(dim=(2, 4)), y.var(dim=(2, 4))
    kl = torch.log((v1 + 1e-6) / (v0 + 1e-6)) + (v0 + (mu0 - mu1) ** 2) / (v1 + 1e-6) - 1
    kl.abs().sum().backward()
    torch.testing.assert_close(kl_gradient(v, target), var.grad)
    assert torch.all(kl_gradient(v, target)[:, :, 20:] == 0)


def test_step_counts_match_the_original() -> None:
    calls: list[tuple[int, int]] = []
    rows: list[int] = []

    def velocity(x: torch.Tensor, _t: float) -> torch.Tensor:
        rows.append(x.shape[0])
        return -x

    x = torch.randn(1, 16, 8)
    integrate(velocity, x, 1.0, 0.12, solver="euler", steps=25, regularization=Regularization(), x0=x,
              on_step=lambda i, n: calls.append((i, n)))
    assert calls == [(i, 50) for i in range(1, 51)]
    assert rows == [1, 2] * 25  # the KL evaluation batches the re-noised copy
    calls.clear()
    integrate(velocity, x, 0.12, 1.0, solver="midpoint", steps=64, on_step=lambda i, n: calls.append((i, n)))
    assert calls == [(i, 64) for i in range(1, 65)]
