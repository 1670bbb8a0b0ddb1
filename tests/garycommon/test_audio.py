"""Audio I/O edge cases: every format, rate, depth and channel layout clients send, and every way it can be broken."""

from __future__ import annotations

import base64
import io
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from garycommon import audio
from garycommon.errors import AudioError, ErrorCode
from tests.hostile import hostile_wav


def _file(channels: int, sr: int, subtype: str, fmt: str = "WAV", seconds: float = 0.25) -> tuple[bytes, np.ndarray]:
    t = np.arange(int(sr * seconds)) / sr
    data = np.stack([0.5 * np.sin(2 * np.pi * (220 + 110 * c) * t) for c in range(channels)], axis=1).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, data, sr, format=fmt, subtype=subtype)
    return buf.getvalue(), data


@pytest.mark.parametrize("channels", [1, 2, 6])
@pytest.mark.parametrize("sr", [8000, 22050, 44100, 48000, 96000])
@pytest.mark.parametrize("subtype,tol", [("PCM_16", 1e-4), ("PCM_24", 1e-6), ("PCM_32", 1e-6), ("FLOAT", 0.0)])
def test_wav_round_trip(channels: int, sr: int, subtype: str, tol: float) -> None:
    raw, data = _file(channels, sr, subtype)
    decoded = audio.decode_audio(base64.b64encode(raw).decode())
    assert decoded.sample_rate == sr
    assert decoded.waveform.shape == (channels, data.shape[0])
    assert decoded.waveform.dtype == torch.float32
    assert np.abs(decoded.waveform.numpy().T - data).max() <= tol + 1e-7


@pytest.mark.parametrize("fmt,subtype", [("FLAC", "PCM_16"), ("OGG", "VORBIS"), ("AIFF", "PCM_16"), ("MP3", "MPEG_LAYER_III")])
def test_other_containers_decode(fmt: str, subtype: str) -> None:
    if fmt not in sf.available_formats():
        pytest.fail(f"libsndfile lacks {fmt}: the soundfile wheel should bundle it")
    raw, data = _file(2, 44100, subtype, fmt=fmt, seconds=0.5)
    decoded = audio.decode_audio(raw)
    assert decoded.channels == 2
    assert abs(decoded.num_samples - data.shape[0]) < 2000  # lossy codecs pad a little
    assert decoded.waveform.abs().max() > 0.1


def test_data_uri_and_whitespace_base64() -> None:
    raw, _ = _file(1, 16000, "PCM_16")
    text = base64.b64encode(raw).decode()
    wrapped = "data:audio/wav;base64," + "\n".join(text[i : i + 76] for i in range(0, len(text), 76))
    assert audio.decode_audio(wrapped).sample_rate == 16000


@pytest.mark.parametrize(
    "payload,code",
    [
        ("", ErrorCode.AUDIO_EMPTY),
        ("   ", ErrorCode.AUDIO_EMPTY),
        ("not base64 at all!!", ErrorCode.AUDIO_UNDECODABLE),
        (base64.b64encode(b"garbage bytes that are no audio file").decode(), ErrorCode.AUDIO_UNDECODABLE),
        ("é", ErrorCode.AUDIO_UNDECODABLE),
    ],
)
def test_bad_payloads_raise_clear_errors(payload: str, code: ErrorCode) -> None:
    with pytest.raises(AudioError) as info:
        audio.decode_audio(payload)
    assert info.value.code == code
    assert info.value.http_status == 400


def test_truncated_wav_is_rejected_or_partial_never_crash() -> None:
    raw, _ = _file(2, 44100, "PCM_16")
    header_only = raw[:44]
    with pytest.raises(AudioError):
        audio.decode_audio(header_only)
    partial = audio.decode_audio(raw[: len(raw) // 2])  # a cut-off body still yields what is there
    assert 0 < partial.num_samples < 11025


def test_zero_sample_wav_is_empty() -> None:
    buf = io.BytesIO()
    sf.write(buf, np.zeros((0, 2), dtype=np.float32), 44100, format="WAV", subtype="PCM_16")
    with pytest.raises(AudioError) as info:
        audio.decode_audio(buf.getvalue())
    assert info.value.code in (ErrorCode.AUDIO_EMPTY, ErrorCode.AUDIO_UNDECODABLE)


def test_oversize_is_refused_before_decoding() -> None:
    huge = "A" * (2 * 1024 * 1024)
    with pytest.raises(AudioError) as info:
        audio.decode_audio(huge, max_bytes=1024 * 1024)
    assert info.value.code == ErrorCode.DATA_TOO_LARGE
    assert info.value.http_status == 413
    raw, _ = _file(2, 48000, "FLOAT", seconds=2.0)
    with pytest.raises(AudioError):
        audio.decode_audio(raw, max_bytes=1000)


def test_mono_downmix_averages_channels() -> None:
    wav = torch.stack([torch.ones(10), -torch.ones(10) * 0.5])
    assert torch.allclose(audio.to_mono(wav), torch.full((1, 10), 0.25))


def test_stereo_upmix_and_51_downmix() -> None:
    mono = torch.randn(1, 100)
    st = audio.to_stereo(mono)
    assert st.shape == (2, 100) and torch.equal(st[0], st[1])
    five_one = torch.zeros(6, 100)
    five_one[0] = 1.0  # front-left only
    out = audio.to_stereo(five_one)
    assert out[0].abs().min() > 0 and torch.all(out[1] == 0)
    assert audio.to_stereo(torch.randn(4, 10)).shape == (2, 10)


def test_resample_changes_length_by_ratio() -> None:
    wav = torch.randn(2, 44100)
    out = audio.resample(wav, 44100, 32000)
    assert out.shape == (2, 32000)
    assert audio.resample(wav, 44100, 44100) is wav


def test_peak_normalize_silence_stays_finite() -> None:
    silent = torch.zeros(2, 1000)
    out = audio.peak_normalize(silent)
    assert torch.isfinite(out).all() and out.abs().max() == 0
    loud = torch.randn(1, 1000) * 5
    assert abs(float(audio.peak_normalize(loud).abs().max()) - 1.0) < 1e-5
    quiet = torch.full((1, 10), 0.5)
    assert torch.equal(audio.peak_normalize(quiet, only_if_above=True), quiet)


@pytest.mark.parametrize("subtype", ["FLOAT", "PCM_16"])
def test_encode_wav_format(subtype: str) -> None:
    wav = torch.rand(2, 4410) * 2.4 - 1.2  # out of range: PCM must clip, float keeps
    raw = audio.encode_wav(wav, 44100, subtype=subtype)
    info = sf.info(io.BytesIO(raw))
    assert (info.samplerate, info.channels, info.subtype, info.frames) == (44100, 2, subtype, 4410)
    back = audio.decode_audio_bytes(raw).waveform
    if subtype == "PCM_16":
        assert back.abs().max() <= 1.0
    else:
        assert torch.allclose(back, wav)


def test_nan_samples_are_sanitised() -> None:
    data = np.array([[0.1], [np.nan], [np.inf]], dtype=np.float32)
    buf = io.BytesIO()
    sf.write(buf, data, 8000, format="WAV", subtype="FLOAT")
    out = audio.decode_audio(buf.getvalue()).waveform
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("rate", [2147483647, 3999, 384001, 1])
def test_absurd_declared_rates_are_refused_before_anything_is_sized(rate: int) -> None:
    with pytest.raises(AudioError) as caught:
        audio.decode_audio_bytes(hostile_wav(rate))
    assert caught.value.http_status == 400 and f"{rate} Hz is outside" in caught.value.message


@pytest.mark.parametrize("rate", [4000, 8000, 11025, 384000])
def test_edge_rates_still_decode(rate: int) -> None:
    assert audio.decode_audio_bytes(hostile_wav(rate, frames=rate // 10)).sample_rate == rate


ODD_RATES = [(3001, 32000), (48000, 8002), (44100, 48001), (4001, 384000), (384000, 4001), (22050, 32000)]


@pytest.mark.parametrize(("src", "dst"), ODD_RATES)
def test_odd_ratios_resample_with_a_small_kernel_and_the_exact_length(src: int, dst: int) -> None:
    down, up = audio.resample_ratio(src, dst)
    assert audio._kernel_floats(down, up) <= audio.RESAMPLE_KERNEL_BUDGET
    assert abs((up / down) / (dst / src) - 1) < 1e-6  # a pitch error far below a cent
    wav = torch.randn(2, src // 5)
    out = audio.resample(wav, src, dst)
    assert out.shape == (2, -(-wav.shape[-1] * dst // src))


def test_odd_ratio_keeps_a_tone_where_it_was() -> None:
    src, dst = 3001, 32000
    t = torch.arange(src) / src
    out = audio.resample(torch.sin(2 * torch.pi * 440 * t)[None], src, dst)
    ref = torch.sin(2 * torch.pi * 440 * torch.arange(out.shape[-1]) / dst)
    assert (out[0, 2000:-2000] - ref[2000:-2000]).abs().max() < 0.01


def test_odd_ratio_resampling_fits_in_a_small_address_space() -> None:
    """1 s at 3001 Hz -> 32000 Hz once cost +1.5 GB (a 96 M-float kernel): run it in a child whose address space is
    capped 400 MB above what importing torch took, so the old kernel cannot even be allocated."""
    code = (
        "import resource, torch\n"
        "from garycommon.audio import resample\n"
        "vm = int(open('/proc/self/statm').read().split()[0]) * resource.getpagesize()\n"
        "resource.setrlimit(resource.RLIMIT_AS, (vm + 400 * 2**20, resource.RLIM_INFINITY))\n"
        "out = resample(torch.randn(2, 3001), 3001, 32000)\n"
        "out = resample(torch.randn(2, 48000), 48000, 8002)\n"
        "print(tuple(out.shape))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "(2, 8002)"


def test_a_compressed_bomb_is_refused_before_decoding() -> None:
    """230 kB of FLAC silence that would decode to 73 M samples (0.3 GB, and a 64 MiB one to tens of GB)."""
    buf = io.BytesIO()
    with sf.SoundFile(buf, mode="w", samplerate=8000, channels=1, format="FLAC", subtype="PCM_16") as f:
        for _ in range(70):
            f.write(np.zeros(1 << 20, dtype=np.int16))
    with pytest.raises(AudioError) as caught:
        audio.decode_audio_bytes(buf.getvalue())
    assert caught.value.code == ErrorCode.DATA_TOO_LARGE and "samples" in caught.value.message
