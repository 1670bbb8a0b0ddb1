"""Synthesised riffs, so demo mode and tests have a riff library without shipping anyone's recordings.

Each riff is a short stereo plucked-saw figure in the named key at the named tempo, written as
`<key>_<bpm>bpm.wav` at 44.1 kHz PCM16.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import soundfile as sf

_SEMITONE = {"c": 0, "csharp": 1, "d": 2, "dsharp": 3, "e": 4, "f": 5, "fsharp": 6, "g": 7, "gsharp": 8, "a": 9,
             "asharp": 10, "b": 11}
_FIGURE = (0, 7, 12, 15, 12, 7, 3, 7)  # minor arpeggio in eighth notes
DEMO_RIFFS = (("gsharp", 80), ("gsharp", 120), ("f", 91), ("c", 100))


def synth_riff(key: str, bpm: int, *, bars: int = 2, sample_rate: int = 44100) -> np.ndarray:
    """[T, 2] float32: `bars` bars of the figure, slightly different left/right so stereo is observable."""
    root_hz = 110.0 * 2 ** ((_SEMITONE[key] - 9) / 12)
    eighth = 30.0 / bpm
    n_notes = bars * 8
    total = int(round(n_notes * eighth * sample_rate))
    out = np.zeros((total, 2), dtype=np.float32)
    for i in range(n_notes):
        start = int(round(i * eighth * sample_rate))
        length = min(int(eighth * sample_rate), total - start)
        t = np.arange(length) / sample_rate
        freq = root_hz * 2 ** (_FIGURE[i % len(_FIGURE)] / 12)
        saw = 2.0 * ((t * freq) % 1.0) - 1.0
        env = np.exp(-t * 9.0) * (1 - np.exp(-t * 800.0))
        note = (saw * env * 0.5).astype(np.float32)
        pan = 0.5 + 0.3 * math.sin(i)
        out[start : start + length, 0] += note * (1 - pan)
        out[start : start + length, 1] += note * pan
    return out


def write_riffs(folder: Path, riffs: tuple[tuple[str, int], ...] = DEMO_RIFFS, *, sample_rate: int = 44100) -> list[Path]:
    """Write the riffs that are not there yet (idempotent); returns every riff path."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for key, bpm in riffs:
        path = folder / f"{key}_{bpm}bpm.wav"
        if not path.exists():
            sf.write(str(path), synth_riff(key, bpm, sample_rate=sample_rate), sample_rate, subtype="PCM_16")
        paths.append(path)
    return paths
