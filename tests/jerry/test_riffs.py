"""The riff library: file-name parsing, a configurable folder of riffs the project synthesises, tempo stretching."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import soundfile as sf
import torch

from jerry.riffs import RiffLibrary, parse_riff_name, time_stretch
from jerry.riffsynth import write_riffs


@pytest.mark.parametrize(("name", "parsed"), [("gsharp_80bpm_4.wav", ("gsharp", 80)), ("fsharp_83_bpm.wav", ("fsharp", 83)),
                                              ("F_91bpm.wav", ("f", 91)), ("bflat_90bpm.wav", None), ("notes.txt", None),
                                              ("g_0bpm.wav", None)])
def test_parse_names(name: str, parsed: tuple[str, int] | None) -> None:
    assert parse_riff_name(name) == parsed


def test_library_scans_synthesised_riffs(tmp_path: Path) -> None:
    write_riffs(tmp_path)
    (tmp_path / "readme.txt").write_text("not a riff")
    lib = RiffLibrary(tmp_path, rng=random.Random(0))
    assert lib.keys() == ["c", "f", "gsharp"]
    assert [d["original_bpm"] for d in lib.details()["gsharp"]] == [80, 120]
    assert lib.pick("GSHARP") is not None and lib.pick("d") is None
    info = sf.info(str(tmp_path / "gsharp_80bpm.wav"))
    assert (info.samplerate, info.channels, info.subtype) == (44100, 2, "PCM_16")


def test_missing_folder_is_an_empty_library(tmp_path: Path) -> None:
    assert RiffLibrary(tmp_path / "nope").keys() == []


def test_render_stretches_to_tempo_keeps_stereo_and_caps_length(tmp_path: Path) -> None:
    write_riffs(tmp_path, (("c", 100),))
    riff = RiffLibrary(tmp_path).pick("c")
    assert riff is not None
    source = sf.info(str(riff.path)).frames  # 2 bars at 100 bpm
    faster = RiffLibrary.render(riff, 200, 44100, 10**7)
    assert faster.shape[0] == 2 and not torch.equal(faster[0], faster[1])
    assert abs(faster.shape[1] - source / 2) <= 2
    assert RiffLibrary.render(riff, 50, 44100, 100000).shape == (2, 100000)
    assert RiffLibrary.render(riff, 100, 32000, 10**7).shape[1] == pytest.approx(source * 32000 / 44100, abs=2)


def test_time_stretch_keeps_pitch() -> None:
    sr = 44100
    t = torch.arange(sr) / sr
    tone = torch.sin(2 * torch.pi * 440 * t).unsqueeze(0)
    out = time_stretch(tone, 1.5)
    spectrum = torch.fft.rfft(out[0, 2048:-2048]).abs()
    peak_hz = spectrum.argmax().item() * sr / (out.shape[1] - 4096)
    assert abs(peak_hz - 440) < 5
