"""While a job waits for its model (a hub download, a load into memory) the client keeps hearing why: `queue_status`
with status `warming`, a message, and the position/total/estimate fields every gary4live build reads; pollers see the
same. A model already resident starts without any such noise."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from tests.gary.gary_helpers import MODEL, Gary, recorder, wav_b64


@pytest.fixture(scope="module")
def gary(make_gary: Any) -> Gary:
    return make_gary()


async def test_a_job_waiting_for_its_model_is_told_so_until_it_starts(gary: Gary) -> None:
    rec = await recorder(gary.url)
    release = gary.hold_gpu()  # the model load can't start: the job sits in `warming` as behind a slow download
    try:
        mark = rec.mark()
        await rec.emit("process_audio_request", {"audio_data": wav_b64(2.0), "model_name": MODEL, "prompt_duration": 1})
        sid = (await rec.wait("process_audio_received", after=mark))["session_id"]
        first = await rec.wait("queue_status", after=mark, within=10, where=lambda d: d["status"] == "warming")
        assert first["session_id"] == sid and "loading" in first["message"]
        assert isinstance(first["position"], int) and isinstance(first["total_queued"], int)
        assert isinstance(first["estimated_seconds"], float)
        async with httpx.AsyncClient(base_url=gary.url) as http:
            poll = (await http.get(f"/api/juce/poll_status/{sid}")).json()
        assert poll["status"] == "warming" and poll["queue_status"]["status"] == "warming"
        await asyncio.sleep(6.5)
        warm = [d for e, d in rec.events[mark:] if e == "queue_status" and d["status"] == "warming"]
        assert len(warm) >= 3, warm  # repeated while it lasts, not once
    finally:
        release.set()
    await rec.wait("audio_processed", after=mark, within=60)
    count = len([1 for e, d in rec.events if e == "queue_status" and d["status"] == "warming"])
    await asyncio.sleep(2.5)
    assert len([1 for e, d in rec.events if e == "queue_status" and d["status"] == "warming"]) == count
    # the model is resident now: the next job starts at once, with no warming message at all
    mark = rec.mark()
    await rec.emit("continue_music_request", {"session_id": sid, "model_name": MODEL, "prompt_duration": 1})
    await rec.wait("music_continued", after=mark, within=60)
    assert not [d for e, d in rec.events[mark:] if e == "queue_status" and d["status"] == "warming"]
    await rec.close()
