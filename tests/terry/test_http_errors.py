"""Bad input gets a precise 4xx and leaves nothing in Redis; an unloadable model is a 503 — over real HTTP."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.terry.terry_helpers import Terry, stored_keys, wav_b64

SID = "bad-input-session"


@pytest.fixture(scope="module")
def bare(make_terry: Callable[..., Terry]) -> Terry:
    return make_terry(models=False)


def _post(t: Terry, body: Any = None, *, content: bytes | None = None, headers: dict[str, str] | None = None
          ) -> httpx.Response:
    kwargs: dict[str, Any] = {"content": content} if content is not None else {"json": body}
    return httpx.post(f"{t.url}/transform", headers=headers, timeout=30, **kwargs)




def test_bad_inputs_get_clear_4xx_and_store_nothing(bare: Terry) -> None:
    transfer: Path = bare.settings.transfer_dir
    outside = transfer.parent / "outside.wav"
    outside.write_bytes(b"RIFF")
    (transfer / "escape.wav").symlink_to(outside)
    ok_audio = wav_b64(2.0)
    base = {"session_id": SID, "variation": "celtic"}
    cases: list[tuple[dict[str, Any] | None, bytes | None, int, str]] = [
        (None, b"{not json", 400, "must be JSON"),
        (None, b"[1, 2]", 400, "JSON object"),
        ({"session_id": SID, "audio": ok_audio}, None, 400, "variation: Missing required data"),
        (base, None, 400, "No audio data or file path provided"),
        ({**base, "variation": "nope", "audio": ok_audio}, None, 400, "Unknown variation: nope"),
        ({**base, "variation": "custom", "audio": ok_audio}, None, 400, "custom_prompt"),
        ({**base, "audio": ok_audio, "flowstep": 0}, None, 400, "flowstep"),
        ({**base, "audio": ok_audio, "flowstep": 1.0}, None, 400, "flowstep"),
        ({**base, "audio": ok_audio, "solver": "heun"}, None, 400, "solver"),
        ({**base, "audio": "%%%not base64%%%"}, None, 400, "base64"),
        ({**base, "audio": "bm90IGF1ZGlvIGF0IGFsbA=="}, None, 400, "could not decode audio"),
        ({**base, "audio": wav_b64(0.5)}, None, 422, "at least 1 s"),
        ({**base, "audio_file_path": "../outside.wav"}, None, 403, "inside the transfer folder"),
        ({**base, "audio_file_path": str(outside)}, None, 403, "inside the transfer folder"),
        ({**base, "audio_file_path": "escape.wav"}, None, 403, "inside the transfer folder"),
        ({**base, "audio_file_path": "/etc/passwd"}, None, 403, "inside the transfer folder"),
        ({**base, "audio_file_path": "missing.wav"}, None, 404, "Audio file not found"),
    ]
    for body, content, status, fragment in cases:
        resp = _post(bare, body, content=content)
        assert resp.status_code == status, (body, content, resp.text)
        assert fragment in resp.json()["error"], (fragment, resp.json())
        assert resp.json()["code"]
    assert stored_keys(bare, SID) == []


def test_unloadable_model_is_503_and_health_says_why(bare: Terry) -> None:
    resp = _post(bare, {"session_id": "load-fails", "variation": "celtic", "audio": wav_b64(1.5)})
    assert resp.status_code == 503, resp.text
    assert resp.json()["code"].startswith("MODEL_")
    health = httpx.get(f"{bare.url}/health", timeout=10)
    assert health.status_code == 503
    assert health.json()["status"] == "degraded" and health.json()["model_loaded"] is False
    assert "missing-model" in health.json()["error"]


def test_variations_has_the_intended_shape(bare: Terry) -> None:
    resp = httpx.get(f"{bare.url}/variations", timeout=10)
    assert resp.status_code == 200
    variations = resp.json()["variations"]
    assert len(variations) == 33
    for info in variations.values():
        assert set(info) >= {"prompt", "flowstep"} and info["flowstep"] == 0.12 and info["prompt"]
    assert "LOWER = MORE change" in resp.json()["flowstep"]  # the original README had it backwards


def test_api_keys_guard_transform_only(make_terry: Callable[..., Terry]) -> None:
    t = make_terry(models=False, api_keys="k1,k2")
    body = {"session_id": SID, "variation": "celtic"}
    assert _post(t, body).status_code == 401
    assert _post(t, body, headers={"X-API-Key": "k2"}).status_code == 400  # past the key check, then validated
    assert httpx.get(f"{t.url}/variations", timeout=10).status_code == 200


def test_oversized_bodies_and_audio_are_413(make_terry: Callable[..., Terry]) -> None:
    t = make_terry(models=False, max_audio_bytes=64 * 1024)
    big = {"session_id": SID, "variation": "celtic", "audio": "A" * (2 * 1024 * 1024)}
    resp = _post(t, big)
    assert resp.status_code == 413 and resp.json()["code"] == "DATA_TOO_LARGE"
    resp = _post(t, {"session_id": SID, "variation": "celtic", "audio": wav_b64(1.0, 44100)})  # ~350 KB decoded
    assert resp.status_code == 413 and "larger than" in resp.json()["error"]
