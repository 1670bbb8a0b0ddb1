"""Hostile input at gary (issue 14): the rate header that OOM-killed the stack (HTTP and Socket.IO), over-deep JSON
on every JSON route (`/task_notification` included), non-finite numbers, and a bang the gateway can never place.
Each is a clear 4xx / `error` event (or a 4xx whose code agrees when no GPU can hold the job), and nothing is stored."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from garycommon.settings import Settings
from tests.gary.gary_helpers import MODEL, Footprint, Gary, expect_error, recorder, wav_b64
from tests.hostile import DEEP_JSON, assert_openapi_honest, deep_object, hostile_wav
from tests.servers import ThreadedServer

EVIL = base64.b64encode(hostile_wav()).decode()
CALLBACK = "http://127.0.0.1:9"  # the callback base gary names and the tiny gateway allows
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def gary(make_gary: Any) -> Gary:
    return make_gary()




def test_absurd_rate_header_is_a_400(gary: Gary, footprint: Footprint) -> None:
    with httpx.Client(base_url=gary.url, timeout=30) as http:
        r = http.post("/api/juce/process_audio", json={"audio_data": EVIL, "model_name": MODEL, "prompt_duration": 1})
        assert r.status_code == 400 and "2147483647 Hz is outside" in r.json()["error"], r.text
        r = http.post("/api/juce/update_cropped_audio", json={"audio_data": EVIL})
        assert r.status_code == 400 and "2147483647 Hz is outside" in r.json()["error"], r.text


async def test_absurd_rate_header_over_socketio_is_an_error_event(gary: Gary, footprint: Footprint) -> None:
    rec = await recorder(gary.url)
    try:
        for event, payload in [("process_audio_request", {"audio_data": EVIL, "model_name": MODEL, "prompt_duration": 1}),
                               ("update_cropped_audio", {"audio_data": EVIL})]:
            err = await expect_error(rec, event, payload, "2147483647 Hz is outside")
            assert err["code"] == "AUDIO_UNDECODABLE"
        assert rec.client.connected
    finally:
        await rec.close()


@pytest.mark.parametrize("path", ["/api/juce/process_audio", "/api/juce/continue_music", "/task_notification"])
def test_deep_json_is_a_400(gary: Gary, footprint: Footprint, path: str) -> None:
    with httpx.Client(base_url=gary.url, timeout=30) as http:
        for body in (DEEP_JSON, deep_object("audio_data", model_name=MODEL, prompt_duration=1)):
            r = http.post(path, content=body, headers=JSON)
            assert r.status_code == 400 and "nested deeper than" in r.json()["error"], r.text
        raw = b'{"session_id": "s1", "status": "ready", "data": {"x": NaN}}'
        r = http.post(path, content=raw, headers=JSON)
        assert r.status_code == 400 and "finite" in r.json()["error"], r.text


def test_non_finite_numbers_are_a_400(gary: Gary, footprint: Footprint) -> None:
    audio = wav_b64(1.0)
    with httpx.Client(base_url=gary.url, timeout=30) as http:
        for field in ("temperature", "cfg_coef", "prompt_duration", "top_k"):
            raw = f'{{"audio_data": "{audio}", "model_name": "{MODEL}", "prompt_duration": 1, "{field}": NaN}}'
            r = http.post("/api/juce/process_audio", content=raw.encode(), headers=JSON)
            assert r.status_code == 400 and "finite" in r.json()["error"], (field, r.text)


async def test_non_finite_numbers_over_socketio_are_an_error_event(gary: Gary, footprint: Footprint) -> None:
    rec = await recorder(gary.url)
    try:
        for field in ("temperature", "cfg_coef", "prompt_duration"):
            payload = {"audio_data": wav_b64(1.0), "model_name": MODEL, "prompt_duration": 1, field: float("nan")}
            err = await expect_error(rec, "process_audio_request", payload, field)
            assert err["code"] == "VALIDATION_ERROR", err
    finally:
        await rec.close()


@pytest.fixture(scope="module")
def tiny_gateway(redis_server: Any) -> Iterator[str]:
    """A gateway that was told of a 1 MB GPU: no bang can ever fit until a bigger card registers."""
    import redis

    from gpuqueue.app import create_app

    url = redis_server.url.rsplit("/", 1)[0] + "/7"
    redis.Redis.from_url(url).flushdb()
    server = ThreadedServer(create_app(Settings(redis_url=url, gary_url=CALLBACK, queue_gpus="gpu0=1", log_level="WARNING")))
    yield server.start().url
    server.stop()


def test_a_bang_no_gpu_can_hold_is_a_4xx_whose_code_agrees(make_gary: Any, tiny_gateway: str) -> None:
    """gary sizes its bangs itself (vram_mb), so the gateway answers 422 UNSATISFIABLE; gary passes that on
    (it answered 500 with code BAD_REQUEST)."""
    g = make_gary(queue_url=tiny_gateway, gary_url=CALLBACK)  # the refusal comes before any callback
    with httpx.Client(base_url=g.url, timeout=30) as http:
        r = http.post("/api/juce/process_audio", json={"audio_data": wav_b64(1.0), "model_name": MODEL,
                                                        "prompt_duration": 1})
    assert r.status_code == 422, r.text
    assert r.json()["code"] == "UNSATISFIABLE" and "largest GPU it may use has 1 MB" in r.json()["error"]


def test_openapi_documents_what_is_sent_and_the_key_scheme(gary: Gary) -> None:
    assert_openapi_honest(httpx.get(f"{gary.url}/openapi.json", timeout=10).json())


async def test_socketio_message_cap_is_answered_under_it_and_named_over_it(gary: Gary) -> None:
    """Under the transport cap (WS_MAX_BYTES) every message is read and answered (audio over 64 MiB: DATA_TOO_LARGE);
    a frame over it is closed by the transport with 1009 "message too big", the documented reason, and gary serves
    on."""
    import websockets

    from garycommon.httpapp import WS_MAX_BYTES

    rec = await recorder(gary.url)
    try:
        envelope = len('42["process_audio_request",{"audio_data":"","model_name":"' + MODEL + '","prompt_duration":1}]')
        just_under = "A" * (WS_MAX_BYTES - envelope - 1024)
        err = await expect_error(rec, "process_audio_request", {"audio_data": just_under, "model_name": MODEL,
                                                                 "prompt_duration": 1}, "too large")
        assert err["code"] == "DATA_TOO_LARGE" and rec.client.connected
    finally:
        await rec.close()
    ws_url = gary.url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
    async with websockets.connect(ws_url, max_size=None) as ws:
        assert (await ws.recv()).startswith("0")
        await ws.send("40")
        assert (await ws.recv()).startswith("40")
        await ws.send('42["process_audio_request",{"audio_data":"' + "A" * (WS_MAX_BYTES + 1024 * 1024) + '"}]')
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009, closed.value
    async with httpx.AsyncClient(base_url=gary.url, timeout=10) as http:
        assert (await http.get("/health")).status_code in (200, 500)  # still serving (500 only for a degraded Mongo check)


def test_gateway_down_is_503_retrying_not_500(make_gary: Any) -> None:
    """While the gateway is down (restarting under gary-stack), a bang is a short 503 "retrying" with Retry-After."""
    from tests.servers import free_port

    g = make_gary(queue_url=f"http://127.0.0.1:{free_port()}")
    with httpx.Client(base_url=g.url, timeout=30) as http:
        r = http.post("/api/juce/process_audio", json={"audio_data": wav_b64(1.0), "model_name": MODEL,
                                                        "prompt_duration": 1})
    assert r.status_code == 503 and r.json()["code"] == "QUEUE_UNAVAILABLE", r.text
    assert "retrying" in r.json()["error"] and len(r.json()["error"]) < 140 and "ConnectError" not in r.json()["error"]
    assert int(r.headers["retry-after"]) > 0
