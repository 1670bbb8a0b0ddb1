"""Audio in and out of jerry: uploads become stereo 44.1 kHz model windows (resampled once, stereo kept), results
become PCM16 WAV files (peak-normalised with an epsilon, so silence stays silence instead of NaN)."""

from __future__ import annotations

import struct

import torch

from garycommon.audio import decode_audio_bytes, peak_normalize, resample, to_stereo
from garycommon.errors import AudioError, ErrorCode


def fit_window(wav: torch.Tensor, samples: int) -> torch.Tensor:
    """Crop or zero-pad [C, T] to exactly `samples`, from sample 0 (the original's alignment)."""
    if wav.shape[-1] >= samples:
        return wav[..., :samples].contiguous()
    return torch.nn.functional.pad(wav, (0, samples - wav.shape[-1]))


def decode_upload(raw: bytes, *, sample_rate: int, window_samples: int, max_bytes: int, max_seconds: float) -> torch.Tensor:
    """Any format/rate/channel count -> [2, window_samples] float32 at `sample_rate`, one resampling step."""
    audio = decode_audio_bytes(raw, max_bytes=max_bytes)
    if audio.duration > max_seconds:
        raise AudioError(ErrorCode.AUDIO_TOO_LONG, f"audio is {audio.duration:.1f} s long; the limit is {max_seconds:g} s")
    # Only the first window is used: crop before resampling so a long upload costs no more than the window.
    keep = int(window_samples * audio.sample_rate / sample_rate) + 64
    wav = to_stereo(audio.waveform[:, :keep])
    return fit_window(resample(wav, audio.sample_rate, sample_rate), window_samples)


def pcm16_wav(wav: torch.Tensor, sample_rate: int) -> bytes:
    """[C, T] float in [-1, 1] -> a canonical 44-byte-header PCM16 WAV file.

    Written directly (round(x * 32767), interleaved little-endian) because it is ~4x faster than going through
    libsndfile, which matters next to a ~30 ms generation; `tests/jerry` checks it against `encode_wav`.
    """
    channels, frames = int(wav.shape[0]), int(wav.shape[-1])
    pcm = wav.clamp(-1.0, 1.0).mul(32767.0).round_().to(torch.int16).t().contiguous().numpy()
    data = pcm.astype("<i2", copy=False).tobytes()
    header = struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + len(data), b"WAVE", b"fmt ", 16, 1, channels, sample_rate,
                         sample_rate * channels * 2, channels * 2, 16, b"data", len(data))
    assert len(data) == frames * channels * 2
    return header + data


def render_wav(audio: torch.Tensor, sample_rate: int, samples: int, *, normalize: bool) -> bytes:
    """The first `samples` of a [2, N] result as a 16-bit stereo WAV file."""
    out = audio[:, :samples].to(torch.float32)
    if out.shape[-1] < samples:
        out = fit_window(out, samples)
    out = torch.nan_to_num(out, nan=0.0, posinf=1.0, neginf=-1.0)
    if normalize:
        out = peak_normalize(out, 1.0, eps=1e-8)
    return pcm16_wav(out, sample_rate)
