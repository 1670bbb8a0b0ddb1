"""Bars/BPM arithmetic of loops (docs/jerry-api.md): explicit bars honoured, never a crash."""

from __future__ import annotations

import pytest

from garycommon.errors import GaryError
from jerry.bpm import bar_samples, extract_bpm, parse_bars, plan_loop, require_bpm

SR = 44100
WINDOW = 524288  # SAO-small: 11.889 s


@pytest.mark.parametrize(
    ("bpm", "bars", "samples"),
    [(74, 2, 286054), (90, 4, 470400), (120, 4, 352800), (128, 4, 330750), (140, 4, 302400), (170, 4, 249035),
     (177, 8, 478372), (200, 8, 423360)],
)
def test_auto_bars_table(bpm: int, bars: int, samples: int) -> None:
    """The original's /loop table (170 bpm gives 4 bars, not the README's 8); lengths are exact integer samples."""
    plan = plan_loop(bpm, None, sample_rate=SR, window_samples=WINDOW)
    assert (plan.bars, plan.samples) == (bars, samples)
    assert plan.samples == (bars * 240 * SR) // bpm
    assert plan.calculated_seconds <= WINDOW / SR - 1.0


def test_exact_lengths_never_lose_a_sample_to_float_rounding() -> None:
    for bpm in range(60, 200):
        for bars in (1, 2, 4):
            assert bar_samples(bars, bpm, SR) == (bars * 240 * SR) // bpm
    assert bar_samples(4, 120, SR) == 352800


def test_explicit_bars_are_honoured_when_they_fit() -> None:
    plan = plan_loop(120, 2, sample_rate=SR, window_samples=WINDOW)
    assert (plan.bars, plan.samples, plan.adjusted) == (2, 176400, False)
    # 4 bars at 90 bpm (10.67 s) fit the window though auto would also pick them
    assert plan_loop(90, 4, sample_rate=SR, window_samples=WINDOW).bars == 4


def test_explicit_bars_too_long_are_halved_to_whole_bars() -> None:
    plan = plan_loop(74, 8, sample_rate=SR, window_samples=WINDOW)  # 25.9 s -> 4 bars = 12.97 s -> 2 bars
    assert (plan.bars, plan.requested_bars, plan.adjusted) == (2, 8, True)
    assert plan.samples == bar_samples(2, 74, SR) <= WINDOW


def test_non_integer_tempo_is_exact() -> None:
    assert extract_bpm("chill 87.5 BPM groove") == 87.5
    assert bar_samples(1, 87.5, SR) == (240 * SR * 1000) // 87500


@pytest.mark.parametrize(("prompt", "bpm"), [("techno 120bpm", 120), ("lo-fi beat 90 BPM", 90), ("a 140Bpm b 99bpm", 140),
                                              ("no tempo", None), ("", None)])
def test_extract_bpm(prompt: str, bpm: float | None) -> None:
    assert extract_bpm(prompt) == bpm


@pytest.mark.parametrize("prompt", ["no tempo here", "slow 5bpm", "fast 900bpm"])
def test_require_bpm_rejects_missing_or_absurd_tempo(prompt: str) -> None:
    with pytest.raises(GaryError) as err:
        require_bpm(prompt)
    assert err.value.http_status == 400


@pytest.mark.parametrize(("value", "expected"), [(None, None), ("", None), ("auto", None), ("4", 4), (8, 8), (2.0, 2)])
def test_parse_bars(value: object, expected: int | None) -> None:
    assert parse_bars(value) == expected


@pytest.mark.parametrize("value", ["3", 3, "four", 2.5, True, "0", -1, "16"])
def test_parse_bars_rejects(value: object) -> None:
    with pytest.raises(GaryError) as err:
        parse_bars(value)
    assert err.value.http_status == 400


def test_parse_bars_free_range_for_riff_and_guided_routes() -> None:
    assert parse_bars("3", None) == 3
    with pytest.raises(GaryError):
        parse_bars("17", None)
