"""The six curl calls of existing clients (docs/jerry-api.md), replayed over a real socket (JSON and multipart), unchanged."""

from __future__ import annotations

import base64

import httpx
import pytest

from tests.jerry.jerry_helpers import JerryServer, assert_jerry_wav, wav_bytes

SR = 44100
WINDOW = 524288


def test_a_gary4live_generate_base64(http: httpx.Client) -> None:
    r = http.post("/generate", json={"prompt": "aggressive techno 120bpm", "steps": 8, "cfg_scale": 1.0,
                                     "return_format": "base64", "seed": -1})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["success"] is True
    meta = body["metadata"]
    assert {"generation_time", "realtime_factor", "seed", "detected_bpm"} <= set(meta)
    assert meta["detected_bpm"] == 120 and 0 <= meta["seed"] < 2**32 and meta["demo"] is True
    assert_jerry_wav(base64.b64decode(body["audio_base64"]), samples=11 * SR)
    assert meta["seconds_total"] == meta["duration_seconds"] == 11


def test_b_readme_wav_attachment(http: httpx.Client) -> None:
    r = http.post("/generate", json={"prompt": "lo-fi beat 90bpm", "steps": 8, "cfg_scale": 1.0, "seed": 12345})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "audio/wav"
    disposition = r.headers["content-disposition"]
    assert disposition.startswith("attachment;") and "stable_audio_12345_" in disposition
    assert_jerry_wav(r.content, samples=11 * SR)


@pytest.mark.parametrize(("extra", "bars"), [({}, 4), ({"bars": "4"}, 4), ({"bars": "2"}, 2), ({"bars": "8"}, 4)])
def test_c_jerry4loops_loop(http: httpx.Client, extra: dict[str, str], bars: int) -> None:
    """bars=8 at 128 bpm (15 s) does not fit the 11.9 s window: whole bars are halved (the original crashed)."""
    form = {"prompt": "techno drums 128bpm", "loop_type": "drums", "steps": "8", "cfg_scale": "1.0", "seed": "-1",
            "return_format": "base64", **extra}
    r = http.post("/generate/loop", data=form, files={"dummy": ("", b"")})  # multipart, as curl -F sends
    assert r.status_code == 200, r.text
    meta = r.json()["metadata"]
    assert meta["bars"] == bars and meta["detected_bpm"] == 128
    assert meta["seconds_per_bar"] == 1.88
    samples = bars * 240 * SR // 128
    assert meta["loop_duration_seconds"] == round(samples / SR, 2)
    assert meta["prompt"] == "techno drums 128bpm", "a drum word is there: no ' drum loop' appended"
    assert_jerry_wav(base64.b64decode(r.json()["audio_base64"]), samples=samples)


def test_c_jerry4loops_loop_with_audio(http: httpx.Client) -> None:
    form = {"prompt": "techno drums 128bpm", "loop_type": "drums", "steps": "8", "cfg_scale": "1.0", "seed": "-1",
            "return_format": "base64", "bars": "4", "style_strength": "0.8"}
    r = http.post("/generate/loop", data=form, files={"audio_file": ("mix.wav", wav_bytes(3.0), "audio/wav")})
    assert r.status_code == 200, r.text
    meta = r.json()["metadata"]
    assert meta["style_transfer"] is True and meta["style_strength"] == 0.8
    assert_jerry_wav(base64.b64decode(r.json()["audio_base64"]), samples=4 * 240 * SR // 128)


def test_c_loop_json_body(http: httpx.Client) -> None:
    r = http.post("/generate/loop", json={"prompt": "deep house 120bpm", "loop_type": "instruments", "bars": 2,
                                          "steps": 4, "seed": 5, "return_format": "file"})
    assert r.status_code == 200, r.text
    assert "loop_instruments_120bpm_2bars_5.wav" in r.headers["content-disposition"]
    assert_jerry_wav(r.content, samples=2 * SR * 2)


def test_d_riff_transfer(http: httpx.Client) -> None:
    form = {"prompt": "dark techno 140bpm", "key": "gsharp", "loop_type": "instruments", "style_strength": "0.8",
            "steps": "8", "cfg_scale": "1.0", "seed": "-1", "return_format": "base64"}
    r = http.post("/generate/loop-with-riff", data=form, files={"dummy": ("", b"")})
    assert r.status_code == 200, r.text
    meta = r.json()["metadata"]
    assert meta["key"] == "gsharp" and meta["source"] == "personal_riff_library" and meta["bars"] == 4
    assert meta["riff"].startswith("gsharp_")
    assert_jerry_wav(base64.b64decode(r.json()["audio_base64"]), samples=4 * 240 * SR // 140)


def test_e_health(jerry: JerryServer) -> None:
    r = httpx.get(f"{jerry.url}/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "healthy" and body["model_loaded"] is True and body["demo"] is True
    assert body["model_info"] == {"sample_rate": SR, "sample_size": WINDOW, "diffusion_objective": "rf_denoiser"}


def test_f_style_transfer_file(http: httpx.Client) -> None:
    r = http.post("/generate/style-transfer", data={"prompt": "techno 140bpm", "style_strength": "0.6"},
                  files={"audio_file": ("in.wav", wav_bytes(2.0, sr=48000), "audio/wav")})
    assert r.status_code == 200, r.text
    assert "style_transfer_" in r.headers["content-disposition"]
    assert_jerry_wav(r.content, samples=WINDOW)
