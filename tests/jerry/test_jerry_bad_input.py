"""Bad input is a 4xx with a clear `error` (never a 500), on every route (numbers that fail to parse -> 400)."""

from __future__ import annotations

import socket

import httpx
import pytest

from tests.jerry.jerry_helpers import MAX_UPLOAD, wav_bytes

WAV = ("in.wav", wav_bytes(1.0), "audio/wav")

JSON_CASES = [
    ({"steps": 8}, 400, "prompt is required"),
    ({"prompt": "x", "steps": "abc"}, 400, "steps"),
    ({"prompt": "x", "steps": 0}, 400, "steps"),
    ({"prompt": "x", "steps": 251}, 400, "steps"),
    ({"prompt": "x", "steps": 8.5}, 400, "steps"),
    ({"prompt": "x", "cfg_scale": -1}, 400, "cfg_scale"),
    ({"prompt": "x", "cfg_scale": 21}, 400, "cfg_scale"),
    ({"prompt": "x", "cfg_scale": "loud"}, 400, "cfg_scale"),
    ({"prompt": "x", "return_format": "xml"}, 400, "return_format"),
    ({"prompt": "x", "seed": -2}, 400, "seed"),
    ({"prompt": "x", "seed": "lucky"}, 400, "seed"),
    ({"prompt": "x", "seconds_total": 0.5}, 400, "seconds_total"),
    ({"prompt": "x", "seconds_total": "long"}, 400, "seconds_total"),
    ({"prompt": "x", "sampler_type": "dpmpp-3m-sde"}, 400, "sampler_type"),
    ({"prompt": "x", "model_type": "huge"}, 400, "model_type"),
    ({"prompt": "x", "model_type": "finetune"}, 400, "finetune_repo and finetune_checkpoint"),
    ({"prompt": "x", "model_type": "finetune", "finetune_repo": "evil/pickles", "finetune_checkpoint": "a.ckpt"}, 403,
     "not allowed"),
    ({"prompt": "x", "model_type": "finetune", "finetune_repo": "thepatch/x", "finetune_checkpoint": "../../etc/passwd"},
     400, "finetune_checkpoint"),
    ({"prompt": "x", "model_type": "finetune", "finetune_repo": "../x", "finetune_checkpoint": "a.ckpt"}, 403, "repo id"),
]


@pytest.mark.parametrize(("body", "status", "needle"), JSON_CASES)
def test_generate_json(http: httpx.Client, body: dict, status: int, needle: str) -> None:
    r = http.post("/generate", json=body)
    assert r.status_code == status, r.text
    assert r.json()["success"] is False and needle in r.json()["error"]


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b""])
def test_generate_malformed_json(http: httpx.Client, raw: bytes) -> None:
    r = http.post("/generate", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]


def test_unsupported_content_type(http: httpx.Client) -> None:
    r = http.post("/generate", content=b"prompt=x", headers={"content-type": "text/plain"})
    assert r.status_code == 415 and "Content-Type" in r.json()["error"]


LOOP = {"prompt": "techno 128bpm", "steps": "8", "seed": "1", "return_format": "base64"}
FORM_CASES = [
    ("/generate/loop", {**LOOP, "prompt": "techno no tempo"}, None, 400, "BPM must be specified"),
    ("/generate/loop", {k: v for k, v in LOOP.items() if k != "prompt"}, None, 400, "prompt is required"),
    ("/generate/loop", {**LOOP, "bars": "3"}, None, 400, "bars must be 1, 2, 4, or 8"),
    ("/generate/loop", {**LOOP, "bars": "four"}, None, 400, "bars"),
    ("/generate/loop", {**LOOP, "steps": "eight"}, None, 400, "steps"),
    ("/generate/loop", {**LOOP, "cfg_scale": "1,0"}, None, 400, "cfg_scale"),
    ("/generate/loop", {**LOOP, "seed": "1e3x"}, None, 400, "seed"),
    ("/generate/loop", {**LOOP, "style_strength": "2"}, WAV, 400, "style_strength"),
    ("/generate/loop", LOOP, ("x.wav", b"not audio at all", "audio/wav"), 400, "could not decode"),
    ("/generate/loop", LOOP, ("x.wav", b"", "audio/wav"), 400, "empty"),
    ("/generate/style-transfer", {"prompt": "x"}, None, 400, "audio_file is required"),
    ("/generate/style-transfer", {"prompt": "x"}, ("", b"", "audio/wav"), 400, "audio_file"),
    ("/generate/style-transfer", {}, WAV, 400, "prompt is required"),
    ("/generate/style-transfer", {"prompt": "x", "style_strength": "0.05"}, WAV, 400, "style_strength"),
    ("/generate/style-transfer", {"prompt": "x", "steps": "101"}, WAV, 400, "steps"),
    ("/generate/style-transfer", {"prompt": "x", "steps": "many"}, WAV, 400, "steps"),
    ("/generate/loop-guided", {"prompt": "x 120bpm"}, None, 400, "audio_file is required"),
    ("/generate/loop-guided", {"prompt": "x"}, WAV, 400, "BPM must be specified"),
    ("/generate/loop-guided", {"prompt": "x 120bpm", "guidance_mask": "everything"}, WAV, 400, "guidance_mask"),
    ("/generate/loop-guided", {"prompt": "x 120bpm", "guidance_strength": "strong"}, WAV, 400, "guidance_strength"),
    ("/generate/loop-guided", {"prompt": "x 120bpm", "bars": "17"}, WAV, 400, "bars"),
    ("/generate/loop-with-riff", {"prompt": "x 120bpm"}, None, 400, "key is required"),
    ("/generate/loop-with-riff", {"prompt": "x", "key": "gsharp"}, None, 400, "BPM must be specified"),
    ("/generate/loop-with-riff", {"prompt": "x 120bpm", "key": "gsharp", "style_strength": "x"}, None, 400, "style_strength"),
]


@pytest.mark.parametrize(("path", "form", "upload", "status", "needle"), FORM_CASES)
def test_form_routes(http: httpx.Client, path: str, form: dict, upload: tuple | None, status: int, needle: str) -> None:
    files = {"audio_file": upload} if upload else {"dummy": ("", b"")}
    r = http.post(path, data=form, files=files)
    assert r.status_code == status, r.text
    assert r.json()["success"] is False and needle in r.json()["error"], r.json()


def test_unknown_riff_key_lists_available_keys(http: httpx.Client) -> None:
    r = http.post("/generate/loop-with-riff", data={"prompt": "x 120bpm", "key": "dsharp"})
    assert r.status_code == 400
    body = r.json()
    assert body["error"] == "No riffs available for key 'dsharp'"
    assert body["available_keys"] == ["c", "f", "gsharp"]


def test_upload_size_cap(http: httpx.Client, jerry) -> None:  # noqa: ANN001
    big = b"\0" * (MAX_UPLOAD + 10)
    r = http.post("/generate/style-transfer", data={"prompt": "x"}, files={"audio_file": ("big.wav", big, "audio/wav")})
    assert r.status_code == 413 and "larger than" in r.json()["error"]
    # A 10 GB upload is refused from its headers alone, before a byte of the body is read.
    host, port = jerry.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /generate/loop HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                     b"Content-Length: 10000000000\r\n\r\n")
        reply = sock.recv(4096).decode("latin-1")
    assert reply.startswith("HTTP/1.1 413"), reply

    def chunks():  # noqa: ANN202 - a chunked body, no Content-Length: cut off once past the cap
        boundary = b"--b\r\nContent-Disposition: form-data; name=\"audio_file\"; filename=\"a.wav\"\r\n\r\n"
        yield boundary
        for _ in range(2 * MAX_UPLOAD // 65536):
            yield b"\0" * 65536

    r = http.post("/generate/loop", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
    assert r.status_code == 413 and "larger than" in r.json()["error"], r.text


def test_upload_too_long_in_time(http: httpx.Client, jerry) -> None:  # noqa: ANN001
    long_cap = jerry.settings.jerry_max_input_seconds
    jerry.settings.jerry_max_input_seconds = 1.5
    try:
        r = http.post("/generate/style-transfer", data={"prompt": "x"},
                      files={"audio_file": ("long.wav", wav_bytes(2.0, sr=8000), "audio/wav")})
    finally:
        jerry.settings.jerry_max_input_seconds = long_cap
    assert r.status_code == 400 and "limit is 1.5 s" in r.json()["error"]


def test_bad_requests_change_nothing(http: httpx.Client, jerry) -> None:  # noqa: ANN001
    (jerry.settings.local_models_dir / "thepatch" / "empty_finetune").mkdir(parents=True, exist_ok=True)
    before = http.get("/models/status").json()
    r = http.post("/generate", json={"prompt": "x", "model_type": "finetune", "finetune_repo": "evil/x",
                                     "finetune_checkpoint": "a.ckpt"})
    assert r.status_code == 403
    r = http.post("/models/switch", json={"model_type": "finetune", "finetune_repo": "thepatch/empty_finetune",
                                          "finetune_checkpoint": "nope.ckpt"})
    assert r.status_code == 404 and "nope.ckpt" in r.json()["error"]
    assert http.get("/models/status").json() == before


def test_api_keys_when_configured(http: httpx.Client, jerry) -> None:  # noqa: ANN001
    jerry.settings.api_keys = ["k1"]
    try:
        r = http.post("/generate", json={"prompt": "x"})
        assert r.status_code == 401 and "API key" in r.json()["error"]
        assert http.get("/models/status").status_code == 401
        assert http.post("/generate", json={}, headers={"X-API-Key": "k1"}).status_code == 400  # past the key check
        assert http.post("/generate", json={}, headers={"Authorization": "Bearer k1"}).status_code == 400
        assert http.get("/health").status_code == 200, "health stays open for orchestrators"
    finally:
        jerry.settings.api_keys = []
