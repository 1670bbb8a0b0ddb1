"""Getting a transform's audio in and out: the transfer-folder guard, decoding, the model's rate, exact lengths.

Output format (documented in README and the response's `metadata`): a WAV file, 2 channels, 32-bit float, at the
input's own sample rate unless the request asks for `output_sample_rate`, holding exactly as many frames as the
input (at that rate: `round(input_frames * out_rate / in_rate)`). Processing itself happens at the codec's true
48 kHz; only `TERRY_LEGACY_32K` reproduces the original's quirk of feeding 32 kHz audio to the 48 kHz codec.
Peaks above full scale are scaled down to 1.0 so clients that convert to integer PCM do not clip.
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch

from garycommon.audio import Audio, decode_audio, encode_wav, peak_normalize, resample, to_base64, to_stereo
from garycommon.errors import AudioError, ErrorCode, GaryError
from garycommon.settings import Settings

MIN_SECONDS = 1.0
LEGACY_RATE = 32000  # the rate the original resampled to before its 48 kHz codec
READ_TIMEOUT_S = 10.0  # a transfer file is local and at most max_audio_bytes: slower than this means something is wrong
READ_CHUNK = 1024 * 1024


def read_transfer_file(raw_path: str, transfer_dir: Path, max_bytes: int) -> bytes:
    """Read a file gary dropped in the shared transfer folder; anything resolving outside it is refused.

    Relative paths are taken inside the folder. The path is fully resolved (symlinks included) before the check,
    and the final component is opened without following links, so neither `..` nor a planted symlink escapes.
    """
    root = transfer_dir.resolve()
    candidate = Path(raw_path)
    if not candidate.is_absolute():
        candidate = root / candidate
    try:
        resolved = candidate.resolve(strict=True)
    except FileNotFoundError as exc:
        if not _inside(Path(os.path.abspath(candidate)), root):
            raise _outside(raw_path, root) from exc
        raise GaryError(ErrorCode.NOT_FOUND, f"Audio file not found: {raw_path}", http_status=404) from exc
    except (OSError, RuntimeError) as exc:  # symlink loops, permission problems
        raise GaryError(ErrorCode.BAD_REQUEST, f"audio_file_path cannot be resolved: {raw_path}") from exc
    if not _inside(resolved, root):
        raise _outside(raw_path, root)
    # Opening a FIFO for reading blocks until a writer comes (a request once hung past 15 s), and a device can
    # stream forever: refuse anything but a regular file before opening it, open non-blocking in case it is swapped
    # in between, and check again on the open descriptor.
    _check_regular(os.stat(resolved, follow_symlinks=False), raw_path, max_bytes)
    try:
        fd = os.open(resolved, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        raise GaryError(ErrorCode.BAD_REQUEST, f"audio_file_path cannot be opened: {raw_path}") from exc
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fd)
        _check_regular(info, raw_path, max_bytes)
        return _read_bounded(fh, info.st_size, raw_path)


def _check_regular(info: os.stat_result, raw_path: str, max_bytes: int) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise GaryError(ErrorCode.BAD_REQUEST, f"audio_file_path is not a regular file: {raw_path}")
    if info.st_size > max_bytes:
        raise AudioError(ErrorCode.DATA_TOO_LARGE, f"audio file is larger than {max_bytes // (1024 * 1024)} MiB")


def _read_bounded(fh: BinaryIO, size: int, raw_path: str) -> bytes:
    """At most `size` bytes (the size checked above, even if the file grows meanwhile), within READ_TIMEOUT_S."""
    deadline = time.monotonic() + READ_TIMEOUT_S
    chunks: list[bytes] = []
    left = size
    while left > 0:
        chunk = fh.read(min(left, READ_CHUNK))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
        if time.monotonic() > deadline:
            raise GaryError(ErrorCode.TIMEOUT, f"reading audio_file_path took over {READ_TIMEOUT_S:g} s: {raw_path}")
    return b"".join(chunks)


def _inside(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


def _outside(raw_path: str, root: Path) -> GaryError:
    return GaryError(
        ErrorCode.BAD_REQUEST, f"audio_file_path must be a file inside the transfer folder {root}: {raw_path}",
        http_status=403,
    )


def load_input(audio_file_path: str | None, audio_b64: str | None, settings: Settings, max_seconds: float) -> Audio:
    """Decode the request's audio (the file path wins, as in the original) and check its duration up front,
    before any GPU lease or model load is spent on it."""
    if audio_file_path:
        raw: str | bytes = read_transfer_file(audio_file_path, settings.transfer_dir, settings.max_audio_bytes)
    elif audio_b64:
        raw = audio_b64
    else:
        raise GaryError(ErrorCode.VALIDATION_ERROR, "No audio data or file path provided")
    audio = decode_audio(raw, max_bytes=settings.max_audio_bytes)
    if audio.num_samples < audio.sample_rate * MIN_SECONDS:
        raise AudioError(
            ErrorCode.AUDIO_TOO_SHORT,
            f"audio is {audio.duration:.2f} s long; MelodyFlow needs at least {MIN_SECONDS:g} s",
            http_status=422,
        )
    if audio.duration > max_seconds:
        raise AudioError(
            ErrorCode.AUDIO_TOO_LONG,
            f"audio is {audio.duration:.1f} s long; this server accepts at most {max_seconds:g} s (TERRY_MAX_INPUT_SECONDS)",
            http_status=422,
        )
    return audio


@dataclass(frozen=True)
class Framing:
    """How the input maps to the model and back."""

    model_rate: int  # rate of the tensor handed to the engine (its codec rate; legacy: 32 kHz, heard as 48 kHz)
    out_rate: int
    out_frames: int


def framing(audio: Audio, engine_rate: int, *, legacy: bool, output_sample_rate: int | None) -> Framing:
    out_rate = int(output_sample_rate or audio.sample_rate)
    out_frames = int(round(audio.num_samples * out_rate / audio.sample_rate))
    return Framing(LEGACY_RATE if legacy else engine_rate, out_rate, out_frames)


def to_model(audio: Audio, frame: Framing) -> torch.Tensor:
    """Stereo at the rate the engine is fed (48 kHz; legacy: 32 kHz samples the engine treats as 48 kHz)."""
    wav = to_stereo(audio.waveform)
    return resample(wav, audio.sample_rate, frame.model_rate).contiguous()


def from_model(wav: torch.Tensor, rate: int, frame: Framing) -> torch.Tensor:
    """The engine's output at `rate` back to the output rate, cropped or zero-padded to exactly `out_frames`,
    finite, and peak-limited to 1.0."""
    wav = torch.nan_to_num(wav.detach().to(torch.float32).cpu(), nan=0.0, posinf=0.0, neginf=0.0)
    wav = to_stereo(wav)
    wav = resample(wav, rate, frame.out_rate)
    n = wav.shape[-1]
    if n > frame.out_frames:
        wav = wav[..., : frame.out_frames]
    elif n < frame.out_frames:
        wav = torch.nn.functional.pad(wav, (0, frame.out_frames - n))
    return peak_normalize(wav, 1.0, only_if_above=True)


def wav_b64(wav: torch.Tensor, sample_rate: int) -> str:
    return to_base64(encode_wav(wav, sample_rate, subtype="FLOAT"))
