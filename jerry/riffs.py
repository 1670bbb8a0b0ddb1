"""The riff library behind /generate/loop-with-riff: a configurable folder of `<key>_<bpm>bpm[_n].wav` files.

Riffs are time-stretched (phase vocoder, pitch kept) to the prompt's tempo and used as style-transfer sources.
Unlike the original they keep their stereo image, are resampled once, and never touch a temp file.
"""

from __future__ import annotations

import logging
import random
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf
import torch
import torchaudio.functional as AF

from garycommon.audio import resample, to_stereo

log = logging.getLogger(__name__)

_NAME = re.compile(r"^([a-g](?:sharp)?)_(\d+)_?bpm(?:_\d+)?$", re.IGNORECASE)
_N_FFT = 2048
_HOP = 512


@dataclass(frozen=True)
class Riff:
    key: str
    original_bpm: int
    path: Path

    @property
    def filename(self) -> str:
        return self.path.name

    def describe(self) -> dict[str, object]:
        description = f"{self.key} riff at {self.original_bpm} BPM"
        return {"filename": self.filename, "original_bpm": self.original_bpm, "description": description}


def parse_riff_name(filename: str) -> tuple[str, int] | None:
    """`gsharp_80bpm_4.wav` / `fsharp_83_bpm.wav` / `f_91bpm.wav` -> (key, bpm); other names -> None."""
    if not filename.lower().endswith(".wav"):
        return None
    match = _NAME.match(filename[:-4])
    if not match or int(match.group(2)) <= 0:
        return None
    return match.group(1).lower(), int(match.group(2))


def time_stretch(wav: torch.Tensor, rate: float) -> torch.Tensor:
    """Change tempo by `rate` (>1 = faster, shorter) without changing pitch; [C, T] -> [C, ~T/rate]."""
    if abs(rate - 1.0) < 1e-6:
        return wav
    window = torch.hann_window(_N_FFT)
    spec = torch.stft(wav, _N_FFT, _HOP, window=window, return_complex=True)
    advance = torch.linspace(0, torch.pi * _HOP, spec.shape[-2])[..., None]
    stretched = AF.phase_vocoder(spec, rate, advance)
    length = round(wav.shape[-1] / rate)
    return torch.istft(stretched, _N_FFT, _HOP, window=window, length=length)


class RiffLibrary:
    """Scans its folder on start (and on `rescan`); picks a riff per key at random, as the original did."""

    def __init__(self, folder: Path, *, rng: random.Random | None = None) -> None:
        self.folder = folder
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._riffs: dict[str, list[Riff]] = {}
        self.rescan()

    def rescan(self) -> None:
        found: dict[str, list[Riff]] = {}
        if self.folder.is_dir():
            for path in sorted(self.folder.iterdir()):
                parsed = parse_riff_name(path.name) if path.is_file() else None
                if parsed is None:
                    if path.is_file() and not path.name.startswith("."):
                        log.warning("riff %s ignored: name is not <key>_<bpm>bpm[_n].wav", path.name)
                    continue
                key, bpm = parsed
                found.setdefault(key, []).append(Riff(key, bpm, path))
        else:
            log.warning("riff folder %s does not exist: /generate/loop-with-riff has no riffs", self.folder)
        for riffs in found.values():
            riffs.sort(key=lambda r: (r.original_bpm, r.filename))
        with self._lock:
            self._riffs = found
        log.info("riffs: %d keys in %s", len(found), self.folder)

    def keys(self) -> list[str]:
        with self._lock:
            return sorted(self._riffs)

    def details(self) -> dict[str, list[dict[str, object]]]:
        with self._lock:
            return {key: [r.describe() for r in riffs] for key, riffs in sorted(self._riffs.items())}

    def pick(self, key: str) -> Riff | None:
        with self._lock:
            riffs = self._riffs.get(key.strip().lower(), [])
            return self._rng.choice(riffs) if riffs else None

    @staticmethod
    def render(riff: Riff, target_bpm: float, sample_rate: int, max_samples: int) -> torch.Tensor:
        """The riff as stereo float32 at `sample_rate`, stretched to `target_bpm`, at most `max_samples` long."""
        data, sr = sf.read(str(riff.path), dtype="float32", always_2d=True)
        wav = to_stereo(torch.from_numpy(data.T.copy()))
        # Crop before stretching so a long riff costs no more than the window it fills.
        rate = float(target_bpm) / riff.original_bpm
        wav = wav[:, : int(max_samples * rate * sr / sample_rate) + _N_FFT]
        wav = time_stretch(wav, rate)
        return resample(wav, int(sr), sample_rate)[:, :max_samples].contiguous()
