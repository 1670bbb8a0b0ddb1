"""gary4live's Socket.IO flows (docs/gary-socketio.md) through a real python-socketio client against a real gary, on both session
store backends: bang -> continue -> retry -> transform -> undo -> crop -> chunked restore (a chunk resent) ->
disconnect/reconnect mid-generation, result recovered through `verify_session`."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from typing import Any

import numpy as np
import pytest
import redis.asyncio as aioredis

from tests.gary.gary_helpers import MODEL, OUTPUT_SECONDS, Gary, Recorder, decode_b64_wav, recorder, wav_b64, wav_bytes

SR = 44100


@pytest.fixture(scope="module", params=["sqlite", "mongo"])
def gary(request: pytest.FixtureRequest, make_gary: Any, terry_url: str) -> Gary:
    if request.param == "mongo":
        mongo = request.getfixturevalue("mongo_server")
        return make_gary(session_store="mongo", mongodb_url=mongo.url, mongodb_db=f"gary_{uuid.uuid4().hex[:8]}",
                         terry_url=terry_url)
    return make_gary(terry_url=terry_url)


def assert_queue_status(data: dict[str, Any], session_id: str) -> None:
    """gary4live reads message/position/total_queued/estimated_seconds unconditionally."""
    assert isinstance(data["message"], str) and data["message"]
    assert isinstance(data["position"], int)
    assert isinstance(data["total_queued"], int)
    assert isinstance(data["estimated_seconds"], float)
    assert isinstance(data["estimated_time"], str)
    assert data["session_id"] == session_id
    assert data["status"] in {"queued", "ready", "warming"}


def assert_result(data: dict[str, Any], session_id: str, seconds: float, channels: int = 2) -> np.ndarray:
    assert data["session_id"] == session_id
    assert isinstance(data["job_id"], str) and data["job_id"]
    assert data["metadata"]["demo"] is True
    audio, sr = decode_b64_wav(data["audio_data"])
    assert sr == SR
    assert audio.shape[1] == channels
    assert audio.shape[0] == pytest.approx(seconds * SR, abs=2)
    assert np.isfinite(audio).all()
    return audio


def progress_values(rec: Recorder, since: int, session_id: str) -> list[int]:
    return [d["progress"] for e, d in rec.events[since:] if e == "progress_update" and d["session_id"] == session_id]


async def stored(gary: Gary, session_id: str, slot: str) -> bytes | None:
    return await asyncio.wrap_future(
        asyncio.run_coroutine_threadsafe(gary.ctx.store.get_audio(session_id, slot), gary.server.loop))


async def test_gary4live_flow(gary: Gary) -> None:
    rec = await recorder(gary.url)
    try:
        await _flow(gary, rec)
    finally:
        await rec.close()


async def _flow(gary: Gary, rec: Recorder) -> None:
    # --- bang: the FIRST prompt_duration seconds prompt a fresh OUTPUT_SECONDS generation ---------------------
    mark = rec.mark()
    await rec.emit("process_audio_request", {"audio_data": wav_b64(3.0), "model_name": MODEL, "prompt_duration": 1,
                                             "top_k": 100, "cfg_coef": 5, "description": "drums, percussion"})
    ack = await rec.wait("process_audio_received", after=mark)
    sid = ack["session_id"]
    uuid.UUID(sid)
    assert_queue_status(await rec.wait("queue_status", after=mark), sid)
    processed = await rec.wait("audio_processed", after=mark)
    assert_result(processed, sid, OUTPUT_SECONDS)
    progress = progress_values(rec, mark, sid)
    assert progress and progress[-1] == 100 and progress == sorted(progress)
    names = [e for e, _ in rec.events[mark:]]
    assert names.index("process_audio_received") < names.index("queue_status") < names.index("audio_processed")
    assert await stored(gary, sid, "last_processed_audio") == base64.b64decode(processed["audio_data"])
    assert await stored(gary, sid, "initial_audio") == wav_bytes(3.0)

    # --- continue: the LAST prompt_duration seconds; output = input minus that tail ++ generation ---------------
    mark = rec.mark()
    await rec.emit("continue_music_request", {"audio_data": processed["audio_data"], "model_name": MODEL,
                                              "session_id": sid, "prompt_duration": 1})
    assert (await rec.wait("continue_music_received", after=mark))["session_id"] == sid
    continued = await rec.wait("music_continued", after=mark)
    audio = assert_result(continued, sid, OUTPUT_SECONDS - 1 + OUTPUT_SECONDS)
    head, _ = decode_b64_wav(processed["audio_data"])
    np.testing.assert_allclose(audio[: SR * 1], head[: SR * 1], atol=1e-6)  # the untouched head is kept
    assert await stored(gary, sid, "last_input_audio") == base64.b64decode(processed["audio_data"])

    # --- retry: same input (last_input_audio) again, a new take ----------------------------------------------
    mark = rec.mark()
    await rec.emit("retry_music_request", {"session_id": sid, "model_name": MODEL, "prompt_duration": 1})
    assert (await rec.wait("retry_music_received", after=mark))["session_id"] == sid
    retried = await rec.wait("music_retried", after=mark)
    assert_result(retried, sid, OUTPUT_SECONDS - 1 + OUTPUT_SECONDS)
    assert retried["audio_data"] != continued["audio_data"]  # a fresh seed each retry
    assert retried["seed"] != continued["seed"]

    # --- transform on terry, then undo back to the transform's input ------------------------------------------
    mark = rec.mark()
    await rec.emit("transform_audio_request", {"audio_data": retried["audio_data"], "variation": "accordion_folk",
                                               "session_id": sid, "flowstep": 0.12, "solver": "Euler"})
    assert (await rec.wait("transform_audio_received", after=mark))["session_id"] == sid
    transformed = await rec.wait("audio_transformed", within=120, after=mark)
    assert transformed["session_id"] == sid and transformed["variation"] == "accordion_folk"
    assert decode_b64_wav(transformed["audio_data"])[0].shape[1] == 2
    assert progress_values(rec, mark, sid), "terry's progress reaches the room through the shared Redis channel"
    assert await stored(gary, sid, "last_processed_audio") == base64.b64decode(transformed["audio_data"])
    assert not list(gary.settings.transfer_dir.glob(f"input_{sid}_*")), "transfer file removed"

    mark = rec.mark()
    await rec.emit("undo_transform_request", {"session_id": sid})
    undone = await rec.wait("transform_undone", after=mark)
    assert undone["session_id"] == sid
    assert undone["audio_data"] == retried["audio_data"]

    # --- crop: the client's edited audio becomes the head -----------------------------------------------------
    mark = rec.mark()
    cropped = wav_b64(1.5)
    await rec.emit("update_cropped_audio", {"session_id": sid, "audio_data": cropped})
    done = await rec.wait("update_cropped_audio_complete", after=mark)
    assert done["session_id"] == sid and done["auto_created"] is False and isinstance(done["message"], str)
    assert await stored(gary, sid, "last_processed_audio") == base64.b64decode(cropped)

    # --- chunked restore, one chunk lost and resent ----------------------------------------------------------
    mark = rec.mark()
    await rec.emit("begin_restore_audio", {})
    ready = await rec.wait("ready_for_chunks", after=mark)
    rid = ready["session_id"]
    assert ready["chunk_size"] == 8 * 1024 * 1024 and rid != sid
    text = wav_b64(2.0)
    size = len(text) // 3 + 1
    chunks = [text[i: i + size] for i in range(0, len(text), size)]
    assert len(chunks) == 3
    for index in (0, 2):
        await rec.emit("audio_chunk", {"session_id": rid, "chunk": chunks[index], "chunk_index": index,
                                       "total_chunks": 3, "is_last": index == 2, "model_name": MODEL,
                                       "prompt_duration": 3})
    missing = await rec.wait("chunks_missing", after=mark)
    assert missing == {"session_id": rid, "missing_chunks": [1]}
    acks = rec.of("chunk_received")[-2:]
    assert [a["chunk_index"] for a in acks] == [0, 2] and acks[-1]["received_chunks"] == 2
    await rec.emit("audio_chunk", {"session_id": rid, "chunk": chunks[1], "chunk_index": 1, "total_chunks": 3})
    complete = await rec.wait("restore_complete", after=mark)
    assert complete["session_id"] == rid and complete["data_size"] == len(wav_bytes(2.0))
    assert await stored(gary, rid, "last_processed_audio") == wav_bytes(2.0)
    doc = gary.call(gary.ctx.store.get(rid))
    assert doc["restored"] is True and doc["model_name"] == MODEL and doc["prompt_duration"] == 3

    # --- cleanup answers the asking connection even though it leaves the room ---------------------------------
    mark = rec.mark()
    await rec.emit("cleanup_session_request", {"session_id": rid})
    assert (await rec.wait("cleanup_complete", after=mark))["session_id"] == rid

    await _reconnect_mid_generation(gary, rec, sid)
    await _every_key_expires(gary)


async def _every_key_expires(gary: Gary) -> None:
    """Everything gary (and terry) wrote to Redis during the flow carries a TTL (the original's busy flags had none)."""
    client = aioredis.Redis.from_url(gary.settings.redis_url)
    try:
        keys = [key async for key in client.scan_iter()]
        assert any(k.startswith(b"gary:job:") for k in keys) and any(k.startswith(b"status:") for k in keys)
        without = [k for k in keys if await client.ttl(k) == -1]
        assert not without, f"keys without TTL: {without}"
    finally:
        await client.aclose()


async def _reconnect_mid_generation(gary: Gary, rec: Recorder, sid: str) -> None:
    """The connection drops while the job runs; the finished result is re-delivered after `verify_session`."""
    release = gary.hold_gpu()
    try:
        mark = rec.mark()
        await rec.emit("continue_music_request", {"session_id": sid, "prompt_duration": 1})
        await rec.wait("continue_music_received", after=mark)
        await rec.close()
    finally:
        release.set()
    deadline = time.monotonic() + 60
    while (job := gary.call(gary.ctx.jobs.current(sid))).state != "completed":
        assert job.state != "failed", job.error
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    again = await recorder(gary.url)
    try:
        await again.emit("verify_session", {"session_id": sid})
        verified = await again.wait("session_verified")
        assert verified["exists"] is True and verified["status"] == "completed" and verified["job_id"] == job.job_id
        result = await again.wait("music_continued")
        assert result["session_id"] == sid and result["job_id"] == job.job_id and result["metadata"]["redelivered"]
        assert base64.b64decode(result["audio_data"]) == await stored(gary, sid, "last_processed_audio")
        # re-verifying on the same connection does not send it twice
        await again.emit("verify_session", {"session_id": sid})
        await again.wait("session_verified", where=lambda d: d is not verified)
        await asyncio.sleep(0.3)
        assert len(again.of("music_continued")) == 1
        # after a reconnect the new connection is in the room again: the next result reaches it live
        mark = again.mark()
        await again.emit("retry_music_request", {"session_id": sid})
        assert_result(await again.wait("music_retried", after=mark), sid, 1.5 - 1 + OUTPUT_SECONDS)
    finally:
        await again.close()


async def test_reconnect_before_the_result_gets_it_live(gary: Gary) -> None:
    """Connection lost while the job runs, back before it ends: verify_session re-joins the room, the result arrives."""
    first = await recorder(gary.url)
    mark = first.mark()
    await first.emit("update_cropped_audio", {"audio_data": wav_b64(2.0)})
    sid = (await first.wait("update_cropped_audio_complete", after=mark))["session_id"]
    release = gary.hold_gpu()
    try:
        await first.emit("continue_music_request", {"session_id": sid, "prompt_duration": 1})
        await first.wait("continue_music_received", after=mark)
        await first.close()
        again = await recorder(gary.url)
        await again.emit("verify_session", {"session_id": sid})
        verified = await again.wait("session_verified")
        assert verified["exists"] is True and verified["status"] in ("queued", "warming")
    finally:
        release.set()
    try:
        result = await again.wait("music_continued")
        assert result["session_id"] == sid and "redelivered" not in result["metadata"]
        assert [d["progress"] for d in again.of("progress_update")][-1] == 100
    finally:
        await again.close()
