"""Audio I/O shared by every service: decode anything clients send, resample, mix channels, encode WAV.

Waveforms are float32 tensors shaped [channels, samples]. Clients send base64 of a whole audio file.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from .errors import AudioError, ErrorCode

MiB = 1024 * 1024
DEFAULT_MAX_BYTES = 64 * MiB
MAX_CHANNELS = 16
# Rates a client file may declare. The header's rate is trusted by nothing downstream until it passes this check:
# a WAV claiming 2147483647 Hz once sent the resampler a ~15 GB kernel.
MIN_SAMPLE_RATE = 4000
MAX_SAMPLE_RATE = 384000
# Most floats one resampling kernel may hold (16 MiB). torchaudio's sinc kernel is about out/g x (in/g + 2 x width)
# for g = gcd(in, out), so 3001 Hz -> 32000 Hz would need ~96 M; past this budget the ratio is approximated.
RESAMPLE_KERNEL_BUDGET = 4 * 1024 * 1024
# Decoded samples one upload may become (256 MB as float32): more than any 16-bit file within 64 MiB holds, so only
# 8-bit files and compressed bombs ever meet it.
MAX_DECODED_SAMPLES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Audio:
    waveform: torch.Tensor  # [C, T] float32
    sample_rate: int

    @property
    def channels(self) -> int:
        return int(self.waveform.shape[0])

    @property
    def num_samples(self) -> int:
        return int(self.waveform.shape[-1])

    @property
    def duration(self) -> float:
        return self.num_samples / float(self.sample_rate)


def b64decode_audio(data: str | bytes, *, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """Decode base64 text (optionally a `data:...;base64,` URI, whitespace allowed) into file bytes."""
    if isinstance(data, bytes | bytearray):
        text = bytes(data)
    elif isinstance(data, str):
        text = data.encode("ascii", errors="strict") if data.isascii() else b""
        if not text and data:
            raise AudioError(ErrorCode.AUDIO_UNDECODABLE, "audio_data is not base64 text")
    else:
        raise AudioError(ErrorCode.AUDIO_UNDECODABLE, "audio_data must be a base64 string")
    if text.startswith(b"data:"):
        _, _, text = text.partition(b",")
    # base64 grows data by 4/3: refuse before decoding so a 100 MB string costs nothing.
    if len(text) > (max_bytes * 4) // 3 + 16:
        raise AudioError(ErrorCode.DATA_TOO_LARGE, f"audio is larger than {max_bytes // MiB} MiB")
    text = b"".join(text.split())
    if not text:
        raise AudioError(ErrorCode.AUDIO_EMPTY, "audio_data is empty")
    try:
        raw = base64.b64decode(text + b"=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise AudioError(ErrorCode.AUDIO_UNDECODABLE, f"audio_data is not valid base64: {exc}") from exc
    if not raw:
        raise AudioError(ErrorCode.AUDIO_EMPTY, "audio_data is empty")
    return raw


def decode_audio_bytes(raw: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Audio:
    """Decode WAV/FLAC/OGG/MP3/AIFF bytes of any rate, bit depth and channel count."""
    if not raw:
        raise AudioError(ErrorCode.AUDIO_EMPTY, "audio is empty")
    if len(raw) > max_bytes:
        raise AudioError(ErrorCode.DATA_TOO_LARGE, f"audio is larger than {max_bytes // MiB} MiB")
    try:
        with sf.SoundFile(io.BytesIO(raw)) as f:
            # the header is judged before a sample is decoded: its rate, channels and decoded size
            _check_header(f.samplerate, f.channels, f.frames)
            data, sr = f.read(dtype="float32", always_2d=True), f.samplerate
    except AudioError:
        raise
    except Exception as sf_exc:  # soundfile raises several types; fall back to PyAV where installed
        decoded = _decode_with_av(raw)
        if decoded is None:
            raise AudioError(ErrorCode.AUDIO_UNDECODABLE, f"could not decode audio: {sf_exc}") from sf_exc
        data, sr = decoded
    if data.ndim != 2 or data.shape[0] == 0 or data.shape[1] == 0:
        raise AudioError(ErrorCode.AUDIO_EMPTY, "audio has no samples")
    _check_header(sr, data.shape[1], data.shape[0])
    wav = torch.from_numpy(np.ascontiguousarray(data.T))
    if not torch.isfinite(wav).all():
        wav = torch.nan_to_num(wav, nan=0.0, posinf=1.0, neginf=-1.0)
    return Audio(wav, int(sr))


def _check_header(sr: int, channels: int, frames: int) -> None:
    """Refuse what would be costly before paying for it: an absurd rate, too many channels, or more decoded samples
    than MAX_DECODED_SAMPLES (a 64 MiB FLAC of silence would otherwise decode to tens of GB)."""
    check_sample_rate(sr)
    if channels > MAX_CHANNELS:
        raise AudioError(ErrorCode.AUDIO_UNDECODABLE, f"audio has {channels} channels (max {MAX_CHANNELS})")
    if frames * channels > MAX_DECODED_SAMPLES:
        raise AudioError(ErrorCode.DATA_TOO_LARGE, f"audio decodes to {frames * channels} samples; at most "
                         f"{MAX_DECODED_SAMPLES} are accepted (a shorter or lower-rate take fits)")


def _decode_with_av(raw: bytes) -> tuple[np.ndarray, int] | None:
    try:
        import av  # type: ignore[import-not-found]
    except ImportError:
        return None
    try:
        with av.open(io.BytesIO(raw)) as container:
            stream = container.streams.audio[0]
            sr = int(stream.rate)
            check_sample_rate(sr)
            frames, total = [], 0
            for f in container.decode(stream):
                chunk = f.to_ndarray().astype(np.float32)
                total += chunk.size
                if total > MAX_DECODED_SAMPLES:
                    _check_header(sr, 1, total)
                frames.append(chunk)
    except AudioError:
        raise
    except Exception:
        return None
    if not frames:
        return None
    planar = [f if f.shape[0] <= MAX_CHANNELS else f.reshape(-1, stream.channels).T for f in frames]
    data = np.concatenate(planar, axis=1).T
    return data, sr


def decode_audio(data: str | bytes, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Audio:
    """Decode base64 text (str) or raw file bytes (bytes) into an `Audio`."""
    raw = b64decode_audio(data, max_bytes=max_bytes) if isinstance(data, str) else data
    return decode_audio_bytes(raw, max_bytes=max_bytes)


def check_sample_rate(sr: object, what: str = "audio sample rate") -> int:
    """A declared rate, refused (400) outside MIN_SAMPLE_RATE..MAX_SAMPLE_RATE before anything is sized from it."""
    rate = int(sr) if isinstance(sr, int | np.integer) else 0
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise AudioError(
            ErrorCode.AUDIO_UNDECODABLE,
            f"{what} {sr} Hz is outside the supported {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz",
            http_status=400,
        )
    return rate


def _kernel_floats(down: int, up: int) -> int:
    """Floats in torchaudio's sinc kernel for a reduced ratio down -> up (lowpass width 6, rolloff 0.99)."""
    width = math.ceil(6 * down / (min(down, up) * 0.99))
    return up * (down + 2 * width)


def resample_ratio(from_sr: int, to_sr: int, budget: int = RESAMPLE_KERNEL_BUDGET) -> tuple[int, int]:
    """The (down, up) pair to resample with: the exact reduced ratio when its kernel fits `budget`, else the closest
    fraction whose kernel does (a pitch error of well under a cent for any rates clients use)."""
    ratio = Fraction(int(to_sr), int(from_sr))
    if _kernel_floats(ratio.denominator, ratio.numerator) <= budget:
        return ratio.denominator, ratio.numerator
    max_den = math.isqrt(budget * ratio.denominator // max(ratio.numerator, 1)) + 1
    while True:
        approx = ratio.limit_denominator(max(max_den, 1))
        if approx.numerator == 0:  # a huge down-sampling factor: 1 / round(1 / ratio)
            approx = Fraction(1, max(1, round(1 / ratio)))
        if _kernel_floats(approx.denominator, approx.numerator) <= budget or max_den <= 1:
            return approx.denominator, approx.numerator
        max_den //= 2


def resample(wav: torch.Tensor, from_sr: int, to_sr: int) -> torch.Tensor:
    """Sinc resampling with bounded memory and time whatever the two rates: an awkward ratio (e.g. 3001 -> 32000 Hz,
    coprime) is replaced by the nearest ratio with a small kernel, and the result is cut or padded to exactly the
    length the true ratio gives."""
    from_sr, to_sr = int(from_sr), int(to_sr)
    if from_sr <= 0 or to_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {from_sr} -> {to_sr}")
    if from_sr == to_sr:
        return wav
    down, up = resample_ratio(from_sr, to_sr)
    if down * to_sr == up * from_sr:
        return AF.resample(wav, from_sr, to_sr)
    out = AF.resample(wav, down, up)
    frames = math.ceil(wav.shape[-1] * to_sr / from_sr)
    if out.shape[-1] > frames:
        return out[..., :frames].contiguous()
    return torch.nn.functional.pad(out, (0, frames - out.shape[-1]))


def to_mono(wav: torch.Tensor) -> torch.Tensor:
    """Average the channels ([C,T] -> [1,T]); the original concatenated them, which was a bug."""
    return wav.mean(dim=0, keepdim=True) if wav.shape[0] != 1 else wav


_SQRT_HALF = 1.0 / math.sqrt(2.0)


def to_stereo(wav: torch.Tensor) -> torch.Tensor:
    """Mono is duplicated; 5.1 (FL FR C LFE SL SR) uses the ITU down-mix; other layouts average to mono first."""
    c = wav.shape[0]
    if c == 2:
        return wav
    if c == 1:
        return wav.expand(2, -1).clone()
    if c == 6:
        fl, fr, ce, _lfe, sl, sr_ = wav
        left = fl + _SQRT_HALF * ce + _SQRT_HALF * sl
        right = fr + _SQRT_HALF * ce + _SQRT_HALF * sr_
        return torch.stack([left, right]) / (1.0 + 2 * _SQRT_HALF)
    return to_mono(wav).expand(2, -1).clone()


def to_channels(wav: torch.Tensor, channels: int) -> torch.Tensor:
    if channels == 1:
        return to_mono(wav)
    if channels == 2:
        return to_stereo(wav)
    raise ValueError(f"unsupported channel count {channels}")


def prepare(audio: Audio, sample_rate: int, channels: int) -> torch.Tensor:
    """Decode-side convenience: resample once and fix the channel count."""
    return resample(to_channels(audio.waveform, channels), audio.sample_rate, sample_rate)


def peak_normalize(wav: torch.Tensor, peak: float = 1.0, *, eps: float = 1e-8, only_if_above: bool = False) -> torch.Tensor:
    """Scale so the loudest sample is `peak`; silence stays silence (the epsilon keeps NaN out)."""
    current = wav.abs().amax()
    if only_if_above and current <= peak:
        return wav
    return wav * (peak / (current + eps))


def encode_wav(wav: torch.Tensor, sample_rate: int, *, subtype: str = "FLOAT") -> bytes:
    """Encode [C,T] as a WAV file: `FLOAT` (32-bit float, gary's format) or `PCM_16` (jerry's)."""
    if wav.dim() == 1:
        wav = wav.unsqueeze(0)
    arr = wav.detach().to(torch.float32).cpu().numpy().T
    if subtype.startswith("PCM"):
        arr = np.clip(arr, -1.0, 1.0)
    buf = io.BytesIO()
    sf.write(buf, arr, int(sample_rate), format="WAV", subtype=subtype)
    return buf.getvalue()


def to_base64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")
