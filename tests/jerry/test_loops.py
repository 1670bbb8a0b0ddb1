"""Guidance masks for /generate/loop-guided: bar boundaries from the tempo, start->end ramps."""

from __future__ import annotations

import torch

from jerry.bpm import plan_loop
from jerry.loops import FADE_FLOOR, guidance_mask

SR, WINDOW, DS = 44100, 524288, 2048
T = WINDOW // DS


def _plan(bpm: int = 120, bars: int | None = 4):
    return plan_loop(bpm, bars, sample_rate=SR, window_samples=WINDOW)


def test_first_bar_covers_one_bar_of_the_tempo() -> None:
    m = guidance_mask("first_bar", _plan(120, 4), latent_frames=T, downsampling=DS)
    bar_frames = -(-2 * SR // DS)  # 2 s per bar at 120 bpm
    assert m.shape == (T,)
    assert m[:bar_frames].eq(1).all() and m[bar_frames:].eq(0).all()


def test_full_and_fade() -> None:
    full = guidance_mask("full", _plan(), latent_frames=T, downsampling=DS)
    assert full.eq(1).all()
    fade = guidance_mask("fade", _plan(), latent_frames=T, downsampling=DS)
    assert fade[0] == 1 and torch.isclose(fade[-1], torch.tensor(FADE_FLOOR))
    assert (fade[1:] <= fade[:-1] + 1e-6).all(), "fade never rises"


def test_weights_ramp() -> None:
    m = guidance_mask("full", _plan(), latent_frames=T, downsampling=DS, start_weight=1.0, end_weight=0.0)
    assert m[0] == 1 and m[-1] == 0
    const = guidance_mask("full", _plan(), latent_frames=T, downsampling=DS, start_weight=0.5)
    assert torch.allclose(const, torch.full((T,), 0.5))
