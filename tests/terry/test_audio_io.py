"""The transfer-folder guard and the exact-length framing, on real files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from garycommon.audio import Audio, encode_wav
from garycommon.errors import GaryError
from terry import audio_io

MAX = 1 << 20


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    transfer = tmp_path / "transfer"
    transfer.mkdir()
    (transfer / "input_a.wav").write_bytes(b"inside")
    secret = tmp_path / "secret.wav"
    secret.write_bytes(b"outside")
    return transfer, secret


def _status(fn: object, *args: object) -> int:
    with pytest.raises(GaryError) as info:
        fn(*args)  # type: ignore[operator]
    return info.value.http_status


def test_reads_inside_by_absolute_or_relative_path(folders: tuple[Path, Path]) -> None:
    transfer, _ = folders
    assert audio_io.read_transfer_file(str(transfer / "input_a.wav"), transfer, MAX) == b"inside"
    assert audio_io.read_transfer_file("input_a.wav", transfer, MAX) == b"inside"


def test_traversal_outside_paths_and_symlink_escape_are_refused(folders: tuple[Path, Path]) -> None:
    transfer, secret = folders
    (transfer / "link.wav").symlink_to(secret)
    (transfer / "dirlink").symlink_to(secret.parent)
    for path in [str(secret), f"{transfer}/../secret.wav", "../secret.wav", "link.wav", "dirlink/secret.wav",
                 "/etc/passwd", f"{transfer}/../nope.wav"]:
        assert _status(audio_io.read_transfer_file, path, transfer, MAX) == 403, path


def test_missing_directory_and_oversized_files(folders: tuple[Path, Path]) -> None:
    transfer, _ = folders
    (transfer / "sub").mkdir()
    (transfer / "big.wav").write_bytes(b"x" * (MAX + 1))
    assert _status(audio_io.read_transfer_file, "gone.wav", transfer, MAX) == 404
    assert _status(audio_io.read_transfer_file, "sub", transfer, MAX) == 400
    assert _status(audio_io.read_transfer_file, "big.wav", transfer, MAX) == 413


def test_inside_symlink_to_inside_file_is_fine(folders: tuple[Path, Path]) -> None:
    transfer, _ = folders
    os.symlink(transfer / "input_a.wav", transfer / "alias.wav")
    assert audio_io.read_transfer_file("alias.wav", transfer, MAX) == b"inside"


@pytest.mark.parametrize(("rate", "frames", "out_rate"), [(44100, 132301, None), (32000, 96000, None),
                                                          (48000, 48000 * 3 + 7, 32000), (22050, 22050 * 2 + 1, None)])
def test_round_trip_length_is_exact(rate: int, frames: int, out_rate: int | None) -> None:
    audio = Audio(torch.randn(1, frames) * 0.1, rate)
    frame = audio_io.framing(audio, 48000, legacy=False, output_sample_rate=out_rate)
    model_in = audio_io.to_model(audio, frame)
    assert model_in.shape[0] == 2
    assert abs(model_in.shape[1] - frames * 48000 / rate) <= 1
    out = audio_io.from_model(model_in * 3.0, frame.model_rate, frame)  # loud: must come back peak-limited
    expected = frames if out_rate is None else round(frames * out_rate / rate)
    assert out.shape == (2, expected) and frame.out_rate == (out_rate or rate)
    assert float(out.abs().max()) <= 1.0 + 1e-6


def test_legacy_mode_feeds_32k_samples_and_reads_them_back_as_32k() -> None:
    audio = Audio(torch.randn(2, 44100 * 2), 44100)
    frame = audio_io.framing(audio, 48000, legacy=True, output_sample_rate=None)
    model_in = audio_io.to_model(audio, frame)
    assert model_in.shape[1] == 64000  # 2 s at 32 kHz, which the 48 kHz codec will hear as 1.33 s
    assert audio_io.from_model(model_in, frame.model_rate, frame).shape == (2, 44100 * 2)


def test_load_input_checks_duration_before_any_model_work(tmp_path: Path) -> None:
    from garycommon.settings import Settings

    settings = Settings(transfer_dir=tmp_path)
    (tmp_path / "short.wav").write_bytes(encode_wav(torch.zeros(2, 24000), 48000))
    (tmp_path / "long.wav").write_bytes(encode_wav(torch.zeros(1, 8000 * 11), 8000))
    assert _status(audio_io.load_input, "short.wav", None, settings, 10.0) == 422
    assert _status(audio_io.load_input, "long.wav", None, settings, 10.0) == 422
    assert _status(audio_io.load_input, None, "bm90IGF1ZGlv", settings, 10.0) == 400
