"""The counter-based sampler draws from exactly the distribution audiocraft's sampler defines."""

from __future__ import annotations

import torch

from gary.musicgen.sampling import SamplingParams, sample, token_keys

PROBS = torch.tensor([0.40, 0.25, 0.15, 0.10, 0.05, 0.03, 0.015, 0.005])


def _draw(n: int, *, top_k: int = 0, top_p: float = 0.0, temperature: float = 1.0, seed: int = 3) -> torch.Tensor:
    """n draws for one row: positions 0..n-1 give independent noise (one batch row per position)."""
    logits = PROBS.log().view(1, 1, -1).expand(n, 1, -1).contiguous()
    params = SamplingParams.build([temperature] * n, [top_k] * n, [top_p] * n, [3.0] * n, [seed] * n,
                                  torch.device("cpu"))
    return sample(logits, params, torch.arange(n), token_keys(1, PROBS.numel(), torch.device("cpu")))[:, 0]


def test_frequencies_match_probabilities() -> None:
    n = 20_000
    freq = torch.bincount(_draw(n), minlength=PROBS.numel()).float() / n
    sigma = (PROBS * (1 - PROBS) / n).sqrt()
    assert ((freq - PROBS).abs() <= 5 * sigma + 1e-3).all(), freq


def test_top_k_top_p_temperature_and_greedy() -> None:
    assert set(_draw(2000, top_k=2).tolist()) == {0, 1}
    # nucleus 0.5: tokens whose preceding mass is <= 0.5 -> {0.40, 0.25}; top_p wins over top_k as in audiocraft
    assert set(_draw(2000, top_p=0.5, top_k=5).tolist()) == {0, 1}
    assert set(_draw(200, temperature=0.0).tolist()) == {0}
    # temperature rescales the logits before the softmax
    expected = torch.softmax(PROBS.log() / 0.3, dim=-1)[0]
    assert abs((_draw(4000, temperature=0.3) == 0).float().mean() - expected) < 0.03


def test_draws_depend_on_seed_and_position_only() -> None:
    a = _draw(500, seed=11)
    assert torch.equal(a, _draw(500, seed=11))
    assert not torch.equal(a, _draw(500, seed=12))
    # the same (seed, position) in a different batch composition gives the same token
    logits = PROBS.log().view(1, 1, -1).expand(3, 1, -1).contiguous()
    params = SamplingParams.build([1.0, 0.5, 1.0], [0, 2, 0], [0.0, 0.0, 0.9], [3.0] * 3, [99, 11, 11],
                                  torch.device("cpu"))
    mixed = sample(logits, params, torch.tensor([0, 7, 42]), token_keys(1, PROBS.numel(), torch.device("cpu")))
    assert mixed[2, 0] == _draw(43, top_p=0.9, seed=11)[42]
