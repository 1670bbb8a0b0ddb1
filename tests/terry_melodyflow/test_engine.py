"""MelodyFlowEngine on the tiny demo checkpoint (CPU): lengths, windows, errors, seeds, solvers, progress."""

from __future__ import annotations

import pytest
import torch

from garycommon.errors import ErrorCode, GaryError
from garycommon.settings import Settings
from terry.melodyflow import MelodyFlowEngine, windows
from terry.melodyflow.demo import REPO_ID

from .conftest import noise


def test_engine_attributes(mf_engine: MelodyFlowEngine) -> None:
    assert (mf_engine.sample_rate, mf_engine.channels, mf_engine.max_seconds, mf_engine.demo) == (48000, 2, 30.0, True)
    assert mf_engine.cfg_coef == 4.0


def test_half_second_is_too_short(mf_engine: MelodyFlowEngine) -> None:
    with pytest.raises(GaryError) as info:
        mf_engine.transform(noise(0.5), "lofi")
    assert info.value.code == ErrorCode.AUDIO_TOO_SHORT and info.value.http_status == 400


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [({"flowstep": 0.0}, ErrorCode.VALIDATION_ERROR), ({"flowstep": 1.0}, ErrorCode.VALIDATION_ERROR),
     ({"solver": "rk4"}, ErrorCode.VALIDATION_ERROR), ({"solver": "midpoint", "steps": 3}, ErrorCode.VALIDATION_ERROR)],
)
def test_bad_parameters_are_validation_errors(mf_engine: MelodyFlowEngine, kwargs: dict, code: ErrorCode) -> None:
    with pytest.raises(GaryError) as info:
        mf_engine.transform(noise(1.2), "lofi", **kwargs)
    assert info.value.code == code


def test_bad_audio_is_refused(mf_engine: MelodyFlowEngine) -> None:
    bad = noise(2)
    bad[0, 5] = float("nan")
    with pytest.raises(GaryError):
        mf_engine.transform(bad, "x")
    with pytest.raises(GaryError):
        mf_engine.transform(torch.zeros(3, 96000), "x")


def test_three_seconds_euler_default(mf_engine: MelodyFlowEngine) -> None:
    audio = noise(3.0) + 0.0001  # 144000 samples: 75 latent frames exactly
    odd = noise(3.0137)  # not a whole number of frames
    seen: list[float] = []
    out = mf_engine.transform(audio, "warm lofi piano", seed=7, progress=seen.append)
    assert out.shape == audio.shape and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert len(seen) == 75 + 1, "25 steps x (2 regularised inversion evals + 1 guided) then the final 100"
    assert seen[-1] == 100.0 and all(p < 100.0 for p in seen[:-1]) and seen == sorted(seen)
    assert seen[49] == pytest.approx(50 / 75 * 100)
    assert mf_engine.transform(odd, "x", seed=1, steps=2).shape == odd.shape


def test_mono_input_becomes_stereo(mf_engine: MelodyFlowEngine) -> None:
    out = mf_engine.transform(noise(1.5)[:1], "x", seed=1, steps=2)
    assert out.shape == (2, 72000)


def test_seeds_are_reproducible(mf_engine: MelodyFlowEngine) -> None:
    audio = noise(1.5, seed=3)
    a = mf_engine.transform(audio, "jungle breaks", seed=42, steps=4)
    b = mf_engine.transform(audio, "jungle breaks", seed=42, steps=4)
    c = mf_engine.transform(audio, "jungle breaks", seed=43, steps=4)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    mf_engine.transform(audio, "jungle breaks", seed=None, steps=2)
    assert isinstance(mf_engine.last_seed, int)


def test_prompt_and_flowstep_change_the_result(mf_engine: MelodyFlowEngine) -> None:
    audio = noise(1.5, seed=4)
    base = mf_engine.transform(audio, "rock band", seed=1, steps=4)
    assert not torch.allclose(base, mf_engine.transform(audio, "music box lullaby", seed=1, steps=4))
    assert not torch.allclose(base, mf_engine.transform(audio, "rock band", seed=1, steps=4, flowstep=0.5))
    assert torch.isfinite(mf_engine.transform(audio, "", seed=1, steps=2)).all()  # empty custom prompt = null prompt


def test_midpoint_totals(mf_engine: MelodyFlowEngine) -> None:
    audio = noise(1.5, seed=5)
    seen: list[float] = []
    mid = mf_engine.transform(audio, "synthwave", solver="midpoint", seed=1, progress=seen.append)
    assert len(seen) == 128 + 1 and seen[-1] == 100.0 and max(seen[:-1]) < 100.0
    assert mid.shape == audio.shape and torch.isfinite(mid).all()
    assert not torch.allclose(mid, mf_engine.transform(audio, "synthwave", solver="euler", seed=1, steps=4))


def test_thirty_seconds_is_one_window(mf_engine: MelodyFlowEngine) -> None:
    audio = noise(30.0, seed=6)
    seen: list[float] = []
    out = mf_engine.transform(audio, "ambient", seed=1, steps=2, progress=seen.append)
    assert out.shape == audio.shape and torch.isfinite(out).all()
    assert len(seen) == 2 * 3 + 1


def test_forty_seconds_uses_overlapping_windows(mf_engine: MelodyFlowEngine) -> None:
    audio = noise(40.0, seed=8)
    seen: list[float] = []
    out = mf_engine.transform(audio, "ambient", seed=1, steps=2, progress=seen.append)
    assert out.shape == audio.shape and torch.isfinite(out).all()
    assert len(seen) == 2 * 3 + 1 and seen == sorted(seen), "two windows batched into one pass"
    assert out[:, -48000:].abs().mean() > 0, "the tail is covered by the last window"


def test_window_plan_and_unit_gain_crossfade() -> None:
    window, overlap = 1000, 100
    for total in (1000, 1001, 1900, 2701, 5000):
        starts = windows.plan(total, window, overlap)
        assert starts[0] == 0 and starts[-1] + window == max(total, window)
        assert all(b - a <= window - overlap for a, b in zip(starts, starts[1:], strict=False))
        pieces = [torch.ones(2, window) for _ in starts]
        torch.testing.assert_close(windows.stitch(pieces, starts, total), torch.ones(2, total))


def test_legacy_32k_mode(mf_settings: Settings) -> None:
    legacy = MelodyFlowEngine.load(REPO_ID, mf_settings.model_copy(update={"terry_legacy_32k": True}), torch.device("cpu"))
    assert legacy.sample_rate == 32000 and legacy.max_seconds == 45.0
    audio = noise(2.0, sample_rate=32000)
    assert legacy.transform(audio, "x", seed=1, steps=2).shape == audio.shape
    legacy.unload()
    with pytest.raises(GaryError) as info:
        legacy.transform(audio, "x", seed=1, steps=2)
    assert info.value.code == ErrorCode.SERVICE_UNAVAILABLE
