"""Behaviour behind the routes: base64 everywhere, reproducible seeds (alone and batched), loop-guided options,
one resampling with stereo kept, silence-safe normalisation, consistent seconds_total, info and model routes."""

from __future__ import annotations

import asyncio
import base64
import io

import httpx
import numpy as np
import pytest
import soundfile as sf
import torch

from garycommon.audio import encode_wav
from jerry.wav import decode_upload, pcm16_wav, render_wav
from tests.jerry.jerry_helpers import JerryServer, assert_jerry_wav, read_wav, wav_bytes

SR = 44100
WINDOW = 524288
WAV = ("in.wav", wav_bytes(2.0), "audio/wav")


def _audio(r: httpx.Response) -> np.ndarray:
    assert r.status_code == 200, r.text
    return read_wav(base64.b64decode(r.json()["audio_base64"]))[1]


@pytest.mark.parametrize(
    ("path", "form", "upload", "samples"),
    [("/generate", {"prompt": "ambient 80bpm", "seconds_total": "5"}, None, 5 * SR),
     ("/generate/loop", {"prompt": "house 124bpm"}, None, 4 * 240 * SR // 124),
     ("/generate/style-transfer", {"prompt": "techno"}, WAV, WINDOW),
     ("/generate/loop-guided", {"prompt": "funk 100bpm", "steps": "4"}, WAV, 4 * 240 * SR // 100),
     ("/generate/loop-with-riff", {"prompt": "funk 100bpm", "key": "c"}, None, 4 * 240 * SR // 100)],
)
def test_base64_on_every_route(http: httpx.Client, path: str, form: dict, upload: tuple | None, samples: int) -> None:
    files = {"audio_file": upload} if upload else {"dummy": ("", b"")}
    r = http.post(path, data={**form, "return_format": "base64", "seed": "3"}, files=files)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["success"] is True and body["metadata"]["seed"] == 3
    assert_jerry_wav(base64.b64decode(body["audio_base64"]), samples=samples)
    # seconds_total is the length returned, on every route
    meta = body["metadata"]
    assert meta.get("seconds_total", meta.get("duration_seconds")) == pytest.approx(samples / SR, abs=1e-3)


def test_same_seed_same_audio_other_seed_other_audio(http: httpx.Client) -> None:
    body = {"prompt": "lo-fi beat 90bpm", "steps": 4, "seed": 12345, "return_format": "base64"}
    first, again = _audio(http.post("/generate", json=body)), _audio(http.post("/generate", json=body))
    assert np.array_equal(first, again)
    other = _audio(http.post("/generate", json={**body, "seed": 12346}))
    assert not np.array_equal(first, other)


async def test_concurrent_requests_are_batched_and_keep_their_seeds(jerry: JerryServer) -> None:
    body = {"prompt": "techno 120bpm", "steps": 2, "return_format": "base64", "seconds_total": 2}
    async with httpx.AsyncClient(base_url=jerry.url, timeout=120) as client:
        alone = [_audio(await client.post("/generate", json={**body, "seed": s})) for s in (1, 2)]
        batches_before = jerry.state.batcher.batches_run
        replies = await asyncio.gather(*[client.post("/generate", json={**body, "seed": s}) for s in (1, 2, 3, 4)])
        batching = (await client.get("/models/status")).json()["batching"]
    together = [_audio(r) for r in replies]
    assert jerry.state.batcher.batches_run - batches_before < 4, "concurrent requests shared engine calls"
    assert jerry.state.batcher.largest_batch >= 2
    assert batching["largest_batch"] >= 2 and batching["waiting"] == 0
    for solo, batched in zip(alone, together[:2], strict=True):
        # same seed -> same audio under load (float batching may move a sample by an LSB or so)
        assert np.abs(solo.astype(np.int32) - batched.astype(np.int32)).max() <= 8
    assert not np.array_equal(together[0], together[1])


def test_loop_guided_respects_cfg_loop_type_and_masks(http: httpx.Client) -> None:
    base = {"prompt": "funk drums 100bpm", "steps": "4", "seed": "9", "return_format": "base64", "bars": "2"}
    files = {"audio_file": WAV}
    plain = http.post("/generate/loop-guided", data={**base, "cfg_scale": "1.0"}, files=files)
    assert plain.status_code == 200, plain.text
    guided_cfg = http.post("/generate/loop-guided", data={**base, "cfg_scale": "6.0", "negative_prompt": "vocals"},
                           files=files)
    assert not np.array_equal(_audio(plain), _audio(guided_cfg)), "cfg_scale is used (the original ignored it)"
    shaped = http.post("/generate/loop-guided", data={**base, "loop_type": "instruments"}, files=files).json()["metadata"]
    assert shaped["prompt"] == "funk 100bpm" and "percussion" in shaped["negative_prompt"]
    outputs = {}
    for mask in ("first_bar", "full", "fade"):
        r = http.post("/generate/loop-guided", data={**base, "guidance_mask": mask}, files=files)
        outputs[mask] = _audio(r)
        assert r.json()["metadata"]["guidance_mask"] == mask
        assert outputs[mask].shape == (2 * 240 * SR // 100, 2)
    assert not np.array_equal(outputs["first_bar"], outputs["full"])
    unguided = _audio(http.post("/generate/loop-guided", data={**base, "guidance_strength": "0"}, files=files))
    assert not np.array_equal(unguided, outputs["fade"])


def test_loop_sampler_follows_the_model_or_the_request(http: httpx.Client) -> None:
    """/loop picked its sampler from an empty config; now the model's objective (pingpong for rf_denoiser) or
    the client's choice decides."""
    form = {"prompt": "garage 130bpm", "steps": "3", "seed": "8", "return_format": "base64", "bars": "1"}
    default = http.post("/generate/loop", data=form)
    euler = http.post("/generate/loop", data={**form, "sampler_type": "euler"})
    assert default.json()["metadata"]["sampler_type"] == "pingpong"
    assert euler.json()["metadata"]["sampler_type"] == "euler"
    assert not np.array_equal(_audio(default), _audio(euler))


def test_loop_guided_file_reply(http: httpx.Client) -> None:
    r = http.post("/generate/loop-guided", data={"prompt": "dub 90bpm", "steps": "2"}, files={"audio_file": WAV})
    assert r.status_code == 200 and r.headers["content-type"] == "audio/wav"
    assert "guided_loop_90bpm_4bars_" in r.headers["content-disposition"]
    assert_jerry_wav(r.content, samples=4 * 240 * SR // 90)


def test_json_with_base64_audio(http: httpx.Client) -> None:
    b64 = base64.b64encode(wav_bytes(1.0, sr=22050, channels=1)).decode()
    r = http.post("/generate/style-transfer", json={"prompt": "x", "audio_base64": b64, "steps": 2,
                                                    "return_format": "base64"})
    assert r.status_code == 200, r.text
    assert r.json()["metadata"]["input_audio_shape"] == [2, WINDOW]
    r = http.post("/generate/loop", json={"prompt": "x 120bpm", "audio_file": b64, "steps": 2, "return_format": "base64"})
    assert r.status_code == 200 and r.json()["metadata"]["style_transfer"] is True
    r = http.post("/generate/style-transfer", json={"prompt": "x", "audio_base64": "!!!notbase64"})
    assert r.status_code == 400 and "base64" in r.json()["error"]


def test_normalize_can_be_turned_off(http: httpx.Client) -> None:
    body = {"prompt": "x", "steps": 2, "seed": 4, "return_format": "base64", "seconds_total": 2}
    loud = _audio(http.post("/generate", json=body))
    raw = http.post("/generate", json={**body, "normalize": False})
    assert raw.json()["metadata"]["normalized"] is False
    assert np.abs(loud).max() >= 32766
    assert not np.array_equal(loud, _audio(raw))


def test_seconds_total_clamped_to_window_with_a_note(http: httpx.Client) -> None:
    r = http.post("/generate", json={"prompt": "x", "steps": 1, "seconds_total": 30, "return_format": "base64"})
    meta = r.json()["metadata"]
    assert meta["seconds_total"] == pytest.approx(WINDOW / SR, abs=1e-3) and "clamped" in meta["notes"][0]
    assert_jerry_wav(base64.b64decode(r.json()["audio_base64"]), samples=WINDOW)
    r = http.post("/generate", json={"prompt": "x", "steps": 1, "seconds_total": 2.5, "return_format": "base64"})
    assert_jerry_wav(base64.b64decode(r.json()["audio_base64"]), samples=int(2.5 * SR))


def test_upload_resampled_once_with_stereo_kept() -> None:
    """A 48 kHz stereo upload: one resampling (a 1 kHz tone stays at 1 kHz) and distinct channels."""
    sr = 48000
    t = np.arange(sr) / sr
    stereo = np.stack([np.sin(2 * np.pi * 1000 * t), 0.5 * np.sin(2 * np.pi * 1500 * t)], axis=1).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, stereo, sr, format="WAV")
    out = decode_upload(buf.getvalue(), sample_rate=SR, window_samples=WINDOW, max_bytes=2**26, max_seconds=60)
    assert out.shape == (2, WINDOW)
    spectrum = torch.fft.rfft(out[0, : SR // 2]).abs()
    assert abs(spectrum.argmax().item() * SR / (SR // 2) - 1000) < 5
    assert not torch.allclose(out[0], out[1])
    assert out[:, SR + 100 :].abs().max() == 0, "zero-padded after the input"


def test_fast_pcm16_writer_matches_libsndfile() -> None:
    x = torch.linspace(-1.2, 1.2, 4000).reshape(2, 2000)
    x[1] = x[1].flip(0)
    ours = pcm16_wav(x, SR)
    info, audio = read_wav(ours)
    assert (info.samplerate, info.channels, info.subtype, info.frames) == (SR, 2, "PCM_16", 2000)
    reference = read_wav(encode_wav(x, SR, subtype="PCM_16"))[1]
    assert np.abs(audio.astype(np.int32) - reference.astype(np.int32)).max() <= 2
    assert audio.max() == 32767 and audio.min() == -32767, "clipped, not wrapped"


def test_silence_stays_silence() -> None:
    wav = render_wav(torch.zeros(2, 1000), SR, 1000, normalize=True)
    info, audio = read_wav(wav)
    assert info.frames == 1000 and not audio.any()
    nan = render_wav(torch.full((2, 10), float("nan")), SR, 10, normalize=True)
    assert not read_wav(nan)[1].any()


def test_docs_and_openapi(http: httpx.Client) -> None:
    assert http.get("/docs").status_code == 200
    spec = http.get("/openapi.json").json()
    for path in ("/generate", "/generate/loop", "/generate/style-transfer", "/generate/loop-guided",
                 "/generate/loop-with-riff", "/health", "/model/info", "/riffs/available", "/models/checkpoints",
                 "/models/switch", "/models/status", "/models/prompts", "/models/clear-cache", "/cleanup"):
        assert path in spec["paths"], path
    loop_body = spec["paths"]["/generate/loop"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(loop_body)
    assert "audio_file" in loop_body["multipart/form-data"]["schema"]["properties"]


def test_info_routes(http: httpx.Client) -> None:
    info = http.get("/model/info").json()
    assert info["config"]["sample_rate"] == SR and info["config"]["sample_size"] == WINDOW
    assert info["config"]["max_duration_seconds"] == pytest.approx(11.889, abs=1e-3)
    riffs = http.get("/riffs/available").json()
    assert riffs["available_keys"] == ["c", "f", "gsharp"] and riffs["total_keys"] == 3
    assert riffs["riff_details"]["gsharp"][0] == {"filename": "gsharp_80bpm.wav", "original_bpm": 80,
                                                  "description": "gsharp riff at 80 BPM"}
    assert http.post("/cleanup").json()["success"] is True
    status = http.get("/models/status").json()
    assert "standard_saos" in status["cache_status"]["loaded_models"] and status["max_models"] == 2


async def test_resident_lease_held_with_the_gateway(jerry: JerryServer, gateway: str) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        for _ in range(100):
            health = (await client.get(f"{jerry.url}/health")).json()
            if health["queue_lease"] == "held":
                break
            await asyncio.sleep(0.1)
        assert health["queue_lease"] == "held"
        held = (await client.get(f"{gateway}/queue")).json()["leases"]
    mine = [x for x in held if x["owner"] == "jerry:resident"]
    assert len(mine) == 1 and mine[0]["resident"] and mine[0]["lane"] == "jerry"
    assert mine[0]["vram_mb"] == jerry.settings.jerry_lease_vram_mb
