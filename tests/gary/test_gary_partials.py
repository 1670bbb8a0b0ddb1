"""A long generation played as it grows: a client that asks (`stream_partials`) gets `partial_audio` events with the
audio so far, and a poller sees the newest in `partial_audio`; clients that don't ask (every existing one) get
nothing new."""

from __future__ import annotations

import asyncio
import base64
import io
import time
from typing import Any

import httpx
import pytest
import soundfile as sf

from tests.gary.gary_helpers import MODEL, Gary, recorder, wav_b64


@pytest.fixture(scope="module")
def gary(make_gary: Any) -> Gary:
    return make_gary(gary_output_seconds=10.0, gary_partial_seconds=1.0)


def seconds_of(audio_b64: str) -> float:
    info = sf.info(io.BytesIO(base64.b64decode(audio_b64)))
    return info.frames / info.samplerate


async def test_partials_grow_until_the_result(gary: Gary) -> None:
    rec = await recorder(gary.url)
    try:
        mark = rec.mark()
        await rec.emit("process_audio_request", {"audio_data": wav_b64(2.0), "model_name": MODEL, "prompt_duration": 1,
                                                 "stream_partials": True})
        result = await rec.wait("audio_processed", after=mark, within=120)
        partials = [d for e, d in rec.events[mark:] if e == "partial_audio"]
        assert len(partials) >= 3, [e for e, _ in rec.events[mark:]]
        lengths = [seconds_of(p["audio_data"]) for p in partials]
        assert lengths == sorted(lengths) and lengths[0] < lengths[-1] < seconds_of(result["audio_data"]) + 0.01
        assert all(p["job_id"] == result["job_id"] and p["session_id"] == result["session_id"] for p in partials)
        assert all(p["final"] is False for p in partials)
        first_partial_at = next(i for i, (e, _) in enumerate(rec.events) if e == "partial_audio")
        result_at = next(i for i, (e, _) in enumerate(rec.events) if e == "audio_processed")
        assert first_partial_at < result_at
    finally:
        await rec.close()


async def test_clients_that_do_not_ask_get_nothing_new_and_pollers_see_the_newest(gary: Gary) -> None:
    rec = await recorder(gary.url)
    try:
        mark = rec.mark()
        await rec.emit("process_audio_request", {"audio_data": wav_b64(2.0), "model_name": MODEL, "prompt_duration": 1})
        await rec.wait("audio_processed", after=mark, within=120)
        assert not [e for e, _ in rec.events[mark:] if e == "partial_audio"]
    finally:
        await rec.close()
    async with httpx.AsyncClient(base_url=gary.url, timeout=30) as http:
        sid = (await http.post("/api/juce/process_audio", json={"audio_data": wav_b64(2.0), "model_name": MODEL,
                                                               "prompt_duration": 1, "stream_partials": True})).json()[
            "session_id"]
        seen: list[float] = []
        deadline = time.monotonic() + 120
        while (poll := (await http.get(f"/api/juce/poll_status/{sid}")).json())["status"] != "completed":
            assert "partial_audio" in poll and poll["status"] != "failed", poll
            if poll["partial_audio"]:
                seen.append(seconds_of(poll["partial_audio"]))
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        assert seen, "no poll saw a partial result"
        assert poll["partial_audio"] is None and poll["audio_data"]  # finished: the whole result, no partial
