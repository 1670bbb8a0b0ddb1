"""Hostile input at jerry (issue 14): the rate header that OOM-killed it, over-deep JSON and non-finite numbers are
all 4xx, answered at once, before any resampling or parsing."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.hostile import DEEP_JSON, assert_openapi_honest, deep_object, hostile_wav


def test_absurd_sample_rate_is_refused_before_resampling(http: httpx.Client) -> None:
    started = time.monotonic()
    r = http.post("/generate/style-transfer", data={"prompt": "x", "steps": "2"},
                  files={"audio_file": ("evil.wav", hostile_wav(), "audio/wav")})
    assert r.status_code == 400, r.text
    assert "2147483647 Hz is outside" in r.json()["error"] and r.json()["success"] is False
    assert time.monotonic() - started < 10
    assert http.get("/health").status_code == 200


@pytest.mark.parametrize("path", ["/generate", "/generate/loop", "/models/switch", "/models/checkpoints"])
def test_deep_json_is_a_400(http: httpx.Client, path: str) -> None:
    for body in (DEEP_JSON, deep_object("prompt", steps=8)):
        r = http.post(path, content=body, headers={"content-type": "application/json"})
        assert r.status_code == 400 and "nested deeper than" in r.json()["error"], r.text


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_a_400(http: httpx.Client, literal: str) -> None:
    raw = b'{"prompt": "x", "seconds_total": ' + literal.encode() + b"}"
    r = http.post("/generate", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400 and "finite" in r.json()["error"], r.text
    # the same words in a form reach the schema, which refuses them too
    r = http.post("/generate/loop", data={"prompt": "techno 128bpm", "steps": "2", "cfg_scale": literal,
                                          "return_format": "base64"}, files={"dummy": ("", b"")})
    assert r.status_code == 400 and "cfg_scale" in r.json()["error"], r.text
    r = http.post("/generate/loop-with-riff", data={"prompt": "x 120bpm", "key": "gsharp", "style_strength": literal})
    assert r.status_code == 400 and "style_strength" in r.json()["error"], r.text


def test_openapi_documents_what_is_sent_and_the_key_scheme(http: httpx.Client) -> None:
    assert_openapi_honest(http.get("/openapi.json").json())
    r = http.get("/models/prompts", params={"key": "x" * 5000})  # a documented-400 route really answers 400, not 422
    assert r.status_code in (200, 400, 404), r.text
