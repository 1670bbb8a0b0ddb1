"""Real transforms over real HTTP with a tiny random MelodyFlow: lengths, presets, seeds, progress into gary's rooms,
one-at-a-time, idle unloading, legacy mode. Steps are cut to 2 where the API allows, to keep CPU time low."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from garycommon.audio import Audio, decode_audio
from terry.presets import PRESETS
from tests.terry.terry_helpers import GarySocketIO, Terry, listen, until, wav_b64

FAST = {"steps": 2}


async def transform(t: Terry, **body: Any) -> httpx.Response:
    async with httpx.AsyncClient(timeout=180) as http:
        return await http.post(f"{t.url}/transform", json=body)


def result_audio(resp: httpx.Response) -> Audio:
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["message"] == "Audio processed successfully"
    return decode_audio(body["audio"])


async def test_30s_transform_progress_reaches_gary_room_and_health_stays_live(
    make_terry: Callable[..., Terry], gary: GarySocketIO
) -> None:
    t = make_terry()
    room, (sid,) = await listen(gary)
    try:
        task = asyncio.create_task(transform(t, session_id=sid, variation="lofi_chill", audio=wav_b64(30.0, 44100),
                                             flowstep=0.1, **FAST))
        health: list[tuple[float, dict[str, Any]]] = []
        async with httpx.AsyncClient(timeout=10) as http:
            while not task.done():
                started = time.monotonic()
                resp = await http.get(f"{t.url}/health")
                health.append((time.monotonic() - started, resp.json()))
                await asyncio.sleep(0.05)
        out = result_audio(await task)
        await asyncio.sleep(0.3)  # let the last Redis fan-out arrive
    finally:
        await room.client.disconnect()

    assert out.sample_rate == 44100 and out.channels == 2 and out.num_samples == 30 * 44100
    # the event loop never blocks on the model; a running transform shows as busy
    assert any(h["busy"] for _, h in health)
    assert max(latency for latency, _ in health) < 2.0

    warming = room.of("queue_status")
    assert warming and warming[0]["status"] == "warming" and warming[0]["message"] == "Loading MelodyFlow model..."
    for q in warming:
        assert {"position", "total_queued", "estimated_seconds"} <= set(q) and q["session_id"] == sid
    values = [p["progress"] for p in room.of("progress_update")]
    assert values[-1] == 100.0 and len(values) >= 2
    assert all(isinstance(v, float) and v == round(v, 2) and 0 < v <= 99.9 for v in values[:-1])
    assert values == sorted(values)
    assert all(p["session_id"] == sid for p in room.of("progress_update"))

    r = aioredis.Redis.from_url(t.settings.redis_url)
    try:
        status = json.loads(await r.get(f"status:{sid}"))
        assert status["status"] == "processing" and status["timestamp"] > 0  # gary, not terry, writes completed
        assert await r.get(f"progress:{sid}") == b"100"
        assert 0 < await r.ttl(f"progress:{sid}") <= 3600
    finally:
        await r.aclose()


async def test_40s_input_comes_back_exactly_as_long(terry: Terry) -> None:
    resp = await transform(terry, session_id="len-40s", variation="jungle_breaks", audio=wav_b64(40.0, 32000, 1),
                           **FAST)
    out = result_audio(resp)
    assert (out.sample_rate, out.channels, out.num_samples) == (32000, 2, 40 * 32000)
    meta = resp.json()["metadata"]
    assert meta["processing_sample_rate"] == 48000 and meta["num_samples"] == 40 * 32000


async def test_3s_seed_is_echoed_and_reproducible(terry: Terry) -> None:
    audio = wav_b64(3.0, 48000)
    first = await transform(terry, session_id="seed-a", variation="celtic", audio=audio, seed=1234, **FAST)
    again = await transform(terry, session_id="seed-b", variation="celtic", audio=audio, seed=1234, **FAST)
    other = await transform(terry, session_id="seed-c", variation="celtic", audio=audio, seed=-1, **FAST)
    assert first.json()["seed"] == again.json()["seed"] == 1234
    assert isinstance(other.json()["seed"], int) and other.json()["seed"] >= 0
    a, b, c = (result_audio(r) for r in (first, again, other))
    assert a.num_samples == 3 * 48000 and a.waveform.equal(b.waveform) and not a.waveform.equal(c.waveform)


async def test_every_preset_name_and_custom_prompts_are_accepted(terry: Terry) -> None:
    short = wav_b64(0.5)  # name resolution precedes the audio check: 422 (too short) proves the name was accepted
    for name in [*PRESETS, "custom", "my_own_style"]:
        extra = {"custom_prompt": "dreamy harp"} if name not in PRESETS else {}
        resp = await transform(terry, session_id="presets", variation=name, audio=short, **extra)
        assert resp.status_code == 422 and resp.json()["code"] == "AUDIO_TOO_SHORT", (name, resp.text)
    audio = wav_b64(1.5)
    for name in ["accordion_folk", "synth_ambient", "jungle_breaks"]:
        resp = await transform(terry, session_id="presets", variation=name, audio=audio, **FAST)
        assert resp.status_code == 200 and resp.json()["metadata"]["prompt"] == PRESETS[name].prompt
    custom = await transform(terry, session_id="presets", variation="custom", custom_prompt="dreamy harp",
                             solver="midpoint", audio=audio, **FAST)
    assert result_audio(custom).num_samples == int(1.5 * 44100)
    meta = custom.json()["metadata"]
    assert (meta["prompt"], meta["solver"], meta["steps"]) == ("dreamy harp", "midpoint", 2)


async def test_one_transform_at_a_time_with_queue_status(terry: Terry, gary: GarySocketIO) -> None:
    room, (first_sid, second_sid) = await listen(gary, 2)  # one connection: arrival order = emit order
    try:
        audio = wav_b64(3.0)
        first = asyncio.create_task(transform(terry, session_id=first_sid, variation="celtic", audio=audio, steps=8))
        await until(lambda: bool(room.of("progress_update", first_sid)), what="first transform's progress")
        second = await transform(terry, session_id=second_sid, variation="celtic", audio=audio, **FAST)
        assert (await first).status_code == 200 and second.status_code == 200
        await asyncio.sleep(0.3)
    finally:
        await room.client.disconnect()
    queued = [q for q in room.of("queue_status", second_sid) if q["status"] == "queued"]
    assert queued and queued[0]["position"] == 1 and queued[0]["total_queued"] == 2
    assert queued[0]["estimated_seconds"] > 0 and "ahead" in queued[0]["message"]
    order = [(event, data["session_id"], data.get("progress")) for event, data in room.events
             if event == "progress_update"]
    first_done = order.index(("progress_update", first_sid, 100.0))
    assert all(sid == first_sid for _, sid, _ in order[:first_done + 1])
    assert all(sid == second_sid for _, sid, _ in order[first_done + 1:]) and order[-1] == ("progress_update", second_sid, 100.0)


async def test_model_unloads_when_idle_but_never_mid_transform(make_terry: Callable[..., Terry]) -> None:
    t = make_terry(terry_idle_unload_seconds=0.5)
    host = t.svc.host
    task = asyncio.create_task(transform(t, session_id="idle", variation="celtic", audio=wav_b64(3.0), steps=8))
    await until(lambda: host.loaded, what="model load")
    assert t.server.call(host.unload(reason="test")) is False  # busy: refused
    assert result_audio(await task).num_samples == 3 * 44100
    assert host.loaded
    await until(lambda: not host.loaded, limit_s=10, what="idle unload")
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"{t.url}/health")).json()["model_loaded"] is False
    resp = await transform(t, session_id="idle", variation="celtic", audio=wav_b64(1.5), **FAST)
    assert resp.status_code == 200 and resp.json()["metadata"]["model_loaded_for_request"] is True
    assert host.loads == 2


async def test_legacy_32k_mode_keeps_length_and_says_so(make_terry: Callable[..., Terry]) -> None:
    t = make_terry(terry_legacy_32k=True)
    resp = await transform(t, session_id="legacy", variation="celtic", audio=wav_b64(3.0, 44100),
                           output_sample_rate=32000, **FAST)
    out = result_audio(resp)
    assert (out.sample_rate, out.num_samples) == (32000, 3 * 32000)
    assert resp.json()["metadata"]["legacy_32k"] is True


@pytest.mark.parametrize("path_kind", ["absolute", "relative"])
async def test_audio_file_path_inside_transfer_dir_is_read_and_kept(terry: Terry, path_kind: str) -> None:
    import base64

    src = terry.settings.transfer_dir / f"input_{path_kind}.wav"
    src.write_bytes(base64.b64decode(wav_b64(1.5, 22050, 1)))
    path = str(src) if path_kind == "absolute" else src.name
    resp = await transform(terry, session_id="from-file", variation="music_box", audio_file_path=path,
                           audio="ignored-when-a-path-is-given", **FAST)
    assert result_audio(resp).num_samples == int(1.5 * 22050)
    assert src.exists()  # never deleted by terry: gary owns the file


async def test_preload_loads_at_start_without_a_request(make_terry: Callable[..., Terry]) -> None:
    t = make_terry(terry_preload=True)
    await until(lambda: t.svc.host.loaded, 30, "preload")
    async with httpx.AsyncClient() as http:
        health = (await http.get(f"{t.url}/health")).json()
    assert health["model_loaded"] is True and health["status"] == "healthy"
    assert health["demo"] is True  # the tiny checkpoint carries the demo marker: random weights never pass as real
