"""Our engine against stable-audio-tools 0.0.19 with the same random weights, seed and noise (CPU, fp32)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from jerry.sao import SAOEngine, SAORequest

from .conftest import SAMPLE_SIZE

pytestmark = pytest.mark.parity
FRAMES = SAMPLE_SIZE // 2048
PROMPT = "dark techno 128bpm"


def test_vae_decode_matches(reference: Any, engine: SAOEngine) -> None:
    z = torch.randn(2, 8, FRAMES, generator=torch.Generator().manual_seed(1))
    want = reference.pretransform.decode(z)
    got = engine.net.pretransform.model.decode(z)
    assert want.abs().max() > 0.01
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


def test_vae_encode_matches_with_same_posterior_noise(reference: Any, engine: SAOEngine) -> None:
    audio = torch.randn(1, 2, SAMPLE_SIZE, generator=torch.Generator().manual_seed(2)) * 0.3
    torch.manual_seed(5)
    want = reference.pretransform.encode(audio)
    noise = torch.randn(1, 8, FRAMES, generator=torch.Generator().manual_seed(5))
    got = engine.net.pretransform.model.encode(audio, noise)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


def test_conditioning_and_dit_outputs_match(reference: Any, engine: SAOEngine) -> None:
    prompts, seconds = [PROMPT, "lo-fi piano with vinyl crackle"], [11, 4.5]
    tensors = reference.conditioner([{"prompt": p, "seconds_total": s} for p, s in zip(prompts, seconds, strict=True)],
                                    "cpu")
    inputs = reference.get_conditioning_inputs(tensors)
    cross, glob = engine._conditioning(prompts, seconds)
    torch.testing.assert_close(cross, inputs["cross_attn_cond"], atol=1e-5, rtol=0)
    torch.testing.assert_close(glob, inputs["global_cond"], atol=1e-5, rtol=0)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 8, FRAMES, generator=gen)
    for t in (1.0, 0.7, 0.12):
        tt = torch.full((2,), t)
        want = reference.model(x, tt, **inputs, cfg_scale=1.0)
        got = engine.net.model.model(x, tt, cross, glob)
        assert want.abs().max() > 0.01
        torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


CASES: list[dict[str, Any]] = [
    {},
    {"cfg_scale": 4.0, "negative_prompt": "drums, percussion"},
    {"cfg_scale": 2.5},
    {"sampler_type": "euler", "steps": 12},
    {"init": 0.7},
    {"init": 0.35, "sampler_type": "euler"},
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_whole_generation_matches(reference: Any, engine: SAOEngine, case: dict[str, Any]) -> None:
    from stable_audio_tools.inference.generation import generate_diffusion_cond

    case = dict(case)
    init = case.pop("init", None)
    audio = torch.randn(2, SAMPLE_SIZE // 2, generator=torch.Generator().manual_seed(9)) * 0.3 if init else None
    neg = case.get("negative_prompt")
    want = generate_diffusion_cond(
        reference, steps=case.get("steps", 8), cfg_scale=case.get("cfg_scale", 1.0),
        conditioning=[{"prompt": PROMPT, "seconds_total": 11}],
        negative_conditioning=[{"prompt": neg, "seconds_total": 11}] if neg else None,
        sample_size=SAMPLE_SIZE, seed=1234, device="cpu", sampler_type=case.get("sampler_type", "pingpong"),
        init_audio=(44100, audio) if init else None, init_noise_level=init or 1.0,
    )[0]
    got = engine.generate([SAORequest(prompt=PROMPT, seconds_total=11, seed=1234, init_audio=audio,
                                      init_noise_level=init, **case)])[0]
    assert got.seed == 1234 and got.audio.shape == (2, SAMPLE_SIZE)
    assert want.abs().max() > 0.01
    torch.testing.assert_close(got.audio, want, atol=1e-5, rtol=1e-4)


def test_channels_last_2d_decoder_layout_is_the_same_function(engine: SAOEngine) -> None:
    """The fast path's [B, C, 1, T] channels-last decoder computes what the 1-D one does."""
    z = torch.randn(2, 8, FRAMES, generator=torch.Generator().manual_seed(4))
    vae = engine.net.pretransform.model
    torch.testing.assert_close(vae.decode(z, layout_2d=True), vae.decode(z), atol=1e-5, rtol=1e-5)
