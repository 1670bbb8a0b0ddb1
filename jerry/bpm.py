"""Tempo and bar arithmetic for loops (4/4 only), in exact integer samples so a loop tiles without drift.

The original computed `int(bars * 240 / bpm * sr)` in floats and crashed whenever `bars` was given. Here an
explicit `bars` is always honoured when it fits the model window and halved (whole bars, still a seamless loop)
when it does not; the response says so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from garycommon.errors import ErrorCode, GaryError

_BPM = re.compile(r"(\d+(?:\.\d+)?)\s*bpm", re.IGNORECASE)
MIN_BPM = 30.0
MAX_BPM = 400.0
AUTO_BAR_CHOICES = (8, 4, 2, 1)
LOOP_BARS = (1, 2, 4, 8)
MAX_BARS = 16
AUTO_MARGIN_SECONDS = 1.0


def extract_bpm(prompt: str | None) -> float | None:
    """First `<number>bpm` in the prompt ("120bpm", "90 BPM", "87.5bpm"); None when absent."""
    if not prompt:
        return None
    match = _BPM.search(prompt)
    if not match:
        return None
    value = float(match.group(1))
    return int(value) if value.is_integer() else value


def require_bpm(prompt: str) -> float:
    bpm = extract_bpm(prompt)
    if bpm is None:
        raise GaryError(ErrorCode.BAD_REQUEST, "BPM must be specified in prompt (e.g., '120bpm')")
    if not MIN_BPM <= bpm <= MAX_BPM:
        raise GaryError(ErrorCode.BAD_REQUEST, f"BPM {bpm} is out of range ({MIN_BPM:g}-{MAX_BPM:g})")
    return bpm


def seconds_per_bar(bpm: float) -> float:
    return 240.0 / bpm


def bar_samples(bars: int, bpm: float, sample_rate: int) -> int:
    """Samples in `bars` bars, floored exactly: 4 bars at 120 bpm and 44.1 kHz is 352800, never 352799."""
    if float(bpm).is_integer():
        return (bars * 240 * sample_rate) // int(bpm)
    # Non-integer tempo: go through a rational with 1/1000 bpm resolution to stay exact.
    milli = round(bpm * 1000)
    return (bars * 240 * sample_rate * 1000) // milli


def auto_bars(bpm: float, limit_seconds: float) -> int:
    """Largest of 8/4/2/1 bars lasting at most `limit_seconds` (1 bar when even that is longer)."""
    for bars in AUTO_BAR_CHOICES:
        if bars * seconds_per_bar(bpm) <= limit_seconds + 1e-9:
            return bars
    return 1


@dataclass(frozen=True)
class LoopPlan:
    """Everything the loop routes report about timing; `samples` is the exact length of the returned audio."""

    bpm: float
    bars: int
    requested_bars: int | None
    seconds_per_bar: float
    samples: int
    sample_rate: int
    window_seconds: float

    @property
    def seconds(self) -> float:
        return self.samples / self.sample_rate

    @property
    def calculated_seconds(self) -> float:
        return self.bars * self.seconds_per_bar

    @property
    def adjusted(self) -> bool:
        return self.requested_bars is not None and self.requested_bars != self.bars


def parse_bars(value: object, allowed: tuple[int, ...] | None = LOOP_BARS) -> int | None:
    """`None`, "", "auto" -> None (auto); an integer (or integer string) checked against `allowed` (else 1..16)."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("", "auto"):
            return None
        try:
            value = int(text)
        except ValueError:
            raise GaryError(ErrorCode.VALIDATION_ERROR, f"bars must be an integer or 'auto', got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int | float) or (isinstance(value, float) and not value.is_integer()):
        raise GaryError(ErrorCode.VALIDATION_ERROR, f"bars must be an integer or 'auto', got {value!r}")
    bars = int(value)
    if allowed is not None and bars not in allowed:
        raise GaryError(ErrorCode.VALIDATION_ERROR, f"bars must be {', '.join(map(str, allowed[:-1]))}, or {allowed[-1]}")
    if not 1 <= bars <= MAX_BARS:
        raise GaryError(ErrorCode.VALIDATION_ERROR, f"bars must be between 1 and {MAX_BARS}")
    return bars


def plan_loop(
    bpm: float, bars: int | None, *, sample_rate: int, window_samples: int, auto_limit_seconds: float | None = None
) -> LoopPlan:
    """Pick the bar count and exact loop length inside a model window of `window_samples`.

    Auto: the largest of 8/4/2/1 bars within `window - 1 s` (the original's margin, keeping the model's own ending
    out of the loop). Explicit: kept when it fits the window, else halved until it does (whole bars stay seamless).
    """
    window_seconds = window_samples / sample_rate
    spb = seconds_per_bar(bpm)
    if bars is None:
        limit = auto_limit_seconds if auto_limit_seconds is not None else window_seconds - AUTO_MARGIN_SECONDS
        chosen = auto_bars(bpm, limit)
    else:
        chosen = bars
        while chosen > 1 and bar_samples(chosen, bpm, sample_rate) > window_samples:
            chosen //= 2
    samples = min(bar_samples(chosen, bpm, sample_rate), window_samples)
    return LoopPlan(bpm, chosen, bars, spb, samples, sample_rate, window_seconds)
