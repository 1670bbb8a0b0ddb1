"""Hostile input at terry (issue 14): an absurd rate header, over-deep JSON, non-finite numbers and a named pipe in
the transfer folder are all a quick 4xx, and nothing is stored."""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Callable

import httpx
import pytest

from tests.hostile import DEEP_JSON, assert_openapi_honest, deep_object, hostile_wav
from tests.terry.terry_helpers import Terry, stored_keys, wav_b64

SID = "hostile-session"
BASE = {"session_id": SID, "variation": "celtic"}


@pytest.fixture(scope="module")
def bare(make_terry: Callable[..., Terry]) -> Terry:
    return make_terry(models=False)




def _post_raw(t: Terry, raw: bytes) -> httpx.Response:
    return httpx.post(f"{t.url}/transform", content=raw, headers={"content-type": "application/json"}, timeout=10)


def test_absurd_rate_header_is_a_400(bare: Terry) -> None:
    r = httpx.post(f"{bare.url}/transform", json={**BASE, "audio": base64.b64encode(hostile_wav()).decode()}, timeout=10)
    assert r.status_code == 400 and "2147483647 Hz is outside" in r.json()["error"], r.text
    (bare.settings.transfer_dir / "evil.wav").write_bytes(hostile_wav())
    r = httpx.post(f"{bare.url}/transform", json={**BASE, "audio_file_path": "evil.wav"}, timeout=10)
    assert r.status_code == 400 and "2147483647 Hz is outside" in r.json()["error"], r.text
    assert stored_keys(bare, SID) == []


def test_deep_json_and_non_finite_numbers_are_400(bare: Terry) -> None:
    for raw in (DEEP_JSON, deep_object("audio", **BASE)):
        r = _post_raw(bare, raw)
        assert r.status_code == 400 and "nested deeper than" in r.json()["error"], r.text
    audio = wav_b64(1.5)
    for field in ("flowstep", "seed", "output_sample_rate", "steps"):
        for literal in ("NaN", "Infinity", "-Infinity"):
            raw = f'{{"session_id": "{SID}", "variation": "celtic", "audio": "{audio}", "{field}": {literal}}}'
            r = _post_raw(bare, raw.encode())
            assert r.status_code == 400 and "finite" in r.json()["error"], (field, literal, r.text)
    assert stored_keys(bare, SID) == []


def test_a_named_pipe_is_refused_at_once(bare: Terry) -> None:
    fifo = bare.settings.transfer_dir / "pipe.wav"
    os.mkfifo(fifo)
    started = time.monotonic()
    r = httpx.post(f"{bare.url}/transform", json={**BASE, "audio_file_path": "pipe.wav"}, timeout=10)
    assert r.status_code == 400 and "not a regular file" in r.json()["error"], r.text
    assert time.monotonic() - started < 5
    (bare.settings.transfer_dir / "dir.wav").mkdir()
    r = httpx.post(f"{bare.url}/transform", json={**BASE, "audio_file_path": "dir.wav"}, timeout=10)
    assert r.status_code == 400 and "not a regular file" in r.json()["error"], r.text
    assert stored_keys(bare, SID) == []


def test_openapi_documents_what_is_sent_and_the_key_scheme(bare: Terry) -> None:
    assert_openapi_honest(httpx.get(f"{bare.url}/openapi.json", timeout=10).json())
