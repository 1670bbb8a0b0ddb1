"""The audio math around a MusicGen call. CPU-bound and blocking: run it in a worker thread, never on the loop.

* bang (`process_audio`): prompt = the FIRST `prompt_duration` seconds; output = `output_seconds` of audio (the
  re-synthesised prompt plus its continuation).
* continue / retry: prompt = the LAST `prompt_duration` seconds; output = input minus that tail ++ the generation.
* The engine call itself is batched across jobs by `gary.batcher`; this module only prepares and assembles.
* Channels: the prompt keeps the input's channels (the engine down-mixes by averaging for mono models, where the
  original used the left channel); the output has the input's channel count (mono stays mono, stereo stays stereo) at
  the input's sample rate, for bang and continue alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from garycommon.audio import Audio, decode_audio_bytes, encode_wav, peak_normalize, resample, to_channels
from garycommon.errors import AudioError, ErrorCode

from .catalog import default_description

MIN_INPUT_SECONDS = 0.1


@dataclass
class GenerationOutput:
    wav: bytes
    seed: int
    sample_rate: int
    seconds: float
    generation_time: float


def _io_channels(audio: Audio) -> int:
    return 1 if audio.channels == 1 else 2


def take_prompt(audio: Audio, prompt_duration: float, *, from_end: bool) -> torch.Tensor:
    """First (bang) or last (continue/retry) `prompt_duration` seconds; the whole input when it is shorter."""
    n = min(audio.num_samples, max(1, int(round(prompt_duration * audio.sample_rate))))
    wav = to_channels(audio.waveform, _io_channels(audio))
    return wav[:, -n:] if from_end else wav[:, :n]


def fit_output(generated: torch.Tensor, generated_sr: int, like: Audio) -> torch.Tensor:
    """Generation resampled to the input's rate, given the input's channel count, scaled down only if it would clip
    (only the generated part: the client's own audio ahead of it in a continuation stays bit-exact)."""
    out = resample(to_channels(generated, _io_channels(like)), generated_sr, like.sample_rate)
    return peak_normalize(out, only_if_above=True)


def continuation(audio: Audio, generated: torch.Tensor, prompt_duration: float) -> torch.Tensor:
    """Input minus its last `prompt_duration` seconds ++ the generation (which re-synthesises that tail)."""
    head_len = max(0, audio.num_samples - int(round(prompt_duration * audio.sample_rate)))
    head = to_channels(audio.waveform, _io_channels(audio))[:, :head_len]
    return torch.cat([head, generated.to(head.dtype)], dim=1)


def encode_result(wav: torch.Tensor, sample_rate: int) -> bytes:
    """32-bit float WAV (the original's format)."""
    return encode_wav(wav, sample_rate, subtype="FLOAT")


def decode_input(raw: bytes, max_bytes: int) -> Audio:
    audio = decode_audio_bytes(raw, max_bytes=max_bytes)
    if audio.duration < MIN_INPUT_SECONDS:
        raise AudioError(ErrorCode.AUDIO_TOO_SHORT, f"audio is {audio.duration:.3f} s; at least {MIN_INPUT_SECONDS} s needed")
    return audio


@dataclass
class Prepared:
    """A decoded input and the engine request made from it (built off the GPU thread)."""

    audio: Audio
    request: Any  # gary.musicgen.GenerationRequest
    job_type: str
    prompt_duration: float


def prepare(job_type: str, params: dict[str, Any], raw_input: bytes, *, max_bytes: int) -> Prepared:
    """Decode the stored input and build the engine request: first (bang) or last (continue/retry) seconds."""
    from gary.musicgen import GenerationRequest

    audio = decode_input(raw_input, max_bytes)
    prompt_duration = float(params["prompt_duration"])
    bang = job_type == "process_audio"
    request = GenerationRequest(
        model_name=params["model_name"],
        prompt=take_prompt(audio, prompt_duration, from_end=not bang),
        prompt_sr=audio.sample_rate,
        duration=float(params["output_seconds"]),
        description=params.get("description") or default_description(params["model_name"]),
        top_k=int(params["top_k"]),
        temperature=float(params["temperature"]),
        cfg_coef=float(params["cfg_coef"]),
        seed=params.get("seed"),
    )
    return Prepared(audio, request, job_type, prompt_duration)


def assemble(prepared: Prepared, generated: torch.Tensor, generated_sr: int) -> torch.Tensor:
    """bang: the generation; continue/retry: head ++ generation; at the input's rate and channels."""
    out = fit_output(generated.float().cpu(), generated_sr, prepared.audio)
    return out if prepared.job_type == "process_audio" else continuation(prepared.audio, out, prepared.prompt_duration)


def partial_wav(prepared: Prepared, generated_so_far: torch.Tensor, generated_sr: int) -> bytes:
    """What the result will start with, as far as it is generated: assembled and encoded like the result."""
    return encode_result(assemble(prepared, generated_so_far, generated_sr), prepared.audio.sample_rate)


def finish(prepared: Prepared, result: Any, generation_time: float) -> GenerationOutput:
    """Assemble (bang: the generation; continue: head ++ generation) and encode at the input's rate and channels."""
    audio = prepared.audio
    wav = assemble(prepared, result.audio, result.sample_rate)
    return GenerationOutput(
        wav=encode_result(wav, audio.sample_rate),
        seed=int(result.seed),
        sample_rate=audio.sample_rate,
        seconds=wav.shape[-1] / audio.sample_rate,
        generation_time=generation_time,
    )
