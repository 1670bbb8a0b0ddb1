"""Bad input on every Socket.IO event and HTTP route: missing, wrong-typed, out-of-range, undecodable, hostile
(path-like ids), oversize (64 MiB+ -> DATA_TOO_LARGE, the connection survives) and 100 MB payloads. Each gets a clear
`error` (string `message`, a `code`) or 4xx, and nothing is stored: no session row, no audio file, no Redis key."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import httpx
import pytest

from garycommon.keys import sign
from tests.gary.gary_helpers import MODEL, Footprint, Gary, Recorder, expect_error, recorder, wav_b64

MiB = 1024 * 1024
GOOD = {"audio_data": wav_b64(2.0), "model_name": MODEL, "prompt_duration": 1}


SERVICE = "service-secret"  # the gateway's: signs /task_notification


@pytest.fixture(scope="module")
def gary(make_gary: Any) -> Gary:
    return make_gary(api_keys=["sekrit"], service_key=SERVICE)


def keyed(gary: Gary) -> str:
    """gary's base URL as gary4juce carries a key (issue 13): every route below it sends `sekrit`."""
    return f"{gary.url}/k/sekrit"


def signed(body: bytes, nid: str = "") -> dict[str, str]:
    """Headers of a genuine gateway callback (signed with the service key)."""
    return {"X-Gary-Signature": sign(SERVICE, nid, body), "content-type": "application/json",
            **({"X-Notification-ID": nid} if nid else {})}






@pytest.fixture
async def rec(gary: Gary) -> Any:
    r = await recorder(f"{gary.url}/?api_key=sekrit")
    yield r
    await r.close()


async def existing_session(gary: Gary) -> str:
    """A session holding only last_processed_audio (made through the crop route)."""
    async with httpx.AsyncClient(base_url=keyed(gary)) as http:
        r = await http.post("/api/juce/update_cropped_audio", json={"audio_data": wav_b64(2.0)})
    sid = r.json()["session_id"]
    gary.call(gary.ctx.store.upsert(sid, {"prompt_duration": 1}))  # the default 6 s is longer than the test output
    return sid


async def test_bang_bad_input(rec: Recorder, footprint: Footprint) -> None:
    cases: list[tuple[Any, str, str | None]] = [
        (None, "payload must be a JSON object", "BAD_REQUEST"),
        ({}, "Missing required field: audio_data", "VALIDATION_ERROR"),
        ({**GOOD, "audio_data": None}, "audio_data", "VALIDATION_ERROR"),
        ({**GOOD, "prompt_duration": "six"}, "prompt_duration", "VALIDATION_ERROR"),
        ({**GOOD, "prompt_duration": 0}, "prompt_duration", "VALIDATION_ERROR"),
        ({**GOOD, "prompt_duration": -0.0}, "prompt_duration", "VALIDATION_ERROR"),
        ({**GOOD, "prompt_duration": 30}, "prompt_duration", "VALIDATION_ERROR"),
        ({**GOOD, "prompt_duration": 2}, "shorter than the 2 s output", "VALIDATION_ERROR"),
        ({**GOOD, "top_k": "lots"}, "top_k", "VALIDATION_ERROR"),
        ({**GOOD, "temperature": -1}, "temperature", "VALIDATION_ERROR"),
        ({**GOOD, "cfg_coef": [3]}, "cfg_coef", "VALIDATION_ERROR"),
        ({**GOOD, "description": "x" * 100_000}, "description", "VALIDATION_ERROR"),
        ({**GOOD, "model_name": "someone/evil-pickle"}, "not allowed", "MODEL_NOT_ALLOWED"),
        ({**GOOD, "model_name": "../../etc/passwd"}, "not an owner/name", "MODEL_NOT_ALLOWED"),
        ({**GOOD, "model_name": 42}, "model_name", "VALIDATION_ERROR"),
        ({**GOOD, "audio_data": "not base64 at all!!"}, "base64", "AUDIO_UNDECODABLE"),
        ({**GOOD, "audio_data": base64.b64encode(b"RIFF" + b"\0" * 200).decode()}, "decode", "AUDIO_UNDECODABLE"),
        ({**GOOD, "audio_data": wav_b64(0.01)}, "at least", "AUDIO_TOO_SHORT"),
        ('{"audio_data": "x", "model_name": ', "Invalid JSON format", "BAD_REQUEST"),
        ("[1, 2]", "Invalid JSON format", "BAD_REQUEST"),
    ]
    for payload, contains, code in cases:
        err = await expect_error(rec, "process_audio_request", payload, contains, code)
        assert "session_id" not in err, "a failed bang names no (random) session"


async def test_session_events_bad_input(gary: Gary, rec: Recorder) -> None:
    sid = await existing_session(gary)
    fp = Footprint(gary)
    before = fp.snapshot()
    hostile = ["../../etc/passwd", "a/b", "x" * 129, "", "..", "a b", "sess\u00e9"]
    for event in ("retry_music_request", "undo_transform_request", "cleanup_session_request", "verify_session",
                  "request_progress_status"):
        await expect_error(rec, event, {}, "session_id", "VALIDATION_ERROR")
        await expect_error(rec, event, {"session_id": 12}, "session_id", "VALIDATION_ERROR")
        for bad in hostile[:3]:
            await expect_error(rec, event, {"session_id": bad}, "session_id")
    for bad in hostile:
        await expect_error(rec, "continue_music_request", {"session_id": bad}, "")
    await expect_error(rec, "continue_music_request", {}, "No session ID provided and no audio data to create session")
    await expect_error(rec, "continue_music_request", {"session_id": "no-such-session"}, "Session not found",
                       "SESSION_NOT_FOUND")
    await expect_error(rec, "continue_music_request", {"session_id": sid, "prompt_duration": 99}, "prompt_duration")
    await expect_error(rec, "continue_music_request", {"session_id": sid, "model_name": "elsewhere/x"}, "not allowed")
    await expect_error(rec, "retry_music_request", {"session_id": "no-such-session"}, "Session not found")
    await expect_error(rec, "retry_music_request", {"session_id": sid}, "No last input audio available for retry")
    await expect_error(rec, "undo_transform_request", {"session_id": sid}, "No previous audio found to undo to")
    await expect_error(rec, "undo_transform_request", {"session_id": "no-such-session"}, "Session not found")
    await expect_error(rec, "transform_audio_request", {"session_id": sid}, "variation", "VALIDATION_ERROR")
    for flowstep in (0, -0.1, 1, 1.5, "fast", float("nan")):
        await expect_error(rec, "transform_audio_request", {"session_id": sid, "variation": "lofi_chill",
                                                            "flowstep": flowstep}, "flowstep", "VALIDATION_ERROR")
    await expect_error(rec, "transform_audio_request", {"session_id": sid, "variation": "lofi_chill", "solver": "rk4"},
                       "solver")
    await expect_error(rec, "transform_audio_request", {"variation": "lofi_chill"},
                       "No audio data available for transformation")
    await expect_error(rec, "update_cropped_audio", {"session_id": sid}, "Missing required field: audio_data")
    await expect_error(rec, "update_cropped_audio", {"session_id": sid, "audio_data": "%%%"}, "base64")
    await expect_error(rec, "restore_processed_audio", {"audio_data": wav_b64(1.0)}, "model_name")
    await expect_error(rec, "restore_processed_audio", {"audio_data": wav_b64(1.0), "model_name": MODEL,
                                                        "prompt_duration": "x"}, "prompt_duration")
    await expect_error(rec, "audio_chunk", {"session_id": sid, "chunk": "AAAA", "chunk_index": 0, "total_chunks": 1},
                       "begin_restore_audio")
    await expect_error(rec, "audio_chunk", {"session_id": sid, "chunk": "", "chunk_index": 0, "total_chunks": 1},
                       "chunk")
    await expect_error(rec, "audio_chunk", {"session_id": sid, "chunk": "AAAA", "chunk_index": "zero",
                                            "total_chunks": 1}, "chunk_index")
    await expect_error(rec, "audio_chunk", {"session_id": sid, "chunk": "AAAA", "chunk_index": 3, "total_chunks": 2},
                       "chunk_index must be smaller")
    assert fp.snapshot() == before


async def test_chunked_restore_bad_input(rec: Recorder, footprint: Footprint) -> None:
    mark = rec.mark()
    await rec.emit("begin_restore_audio")
    rid = (await rec.wait("ready_for_chunks", after=mark))["session_id"]
    # reassembled text that is not audio: an error, and every chunk key is gone
    await rec.emit("audio_chunk", {"session_id": rid, "chunk": "bm90IGF1ZGlv", "chunk_index": 0, "total_chunks": 1,
                                   "is_last": True})
    err = await rec.wait("error", after=mark)
    assert err["code"] == "AUDIO_UNDECODABLE" and err["session_id"] == rid
    # more than 64 MiB across chunks: refused and discarded
    mark = rec.mark()
    await rec.emit("begin_restore_audio")
    rid = (await rec.wait("ready_for_chunks", after=mark))["session_id"]
    chunk = "A" * (8 * MiB)
    for index in range(9):
        await rec.emit("audio_chunk", {"session_id": rid, "chunk": chunk, "chunk_index": index, "total_chunks": 9})
    err = await rec.wait("error", after=mark, within=60, where=lambda e: e["code"] == "DATA_TOO_LARGE")
    assert err["message"] == "Audio data is too large to restore"
    await rec.wait("chunk_received", after=mark)
    await asyncio.sleep(0.3)
    assert rec.client.connected


async def test_oversize_socket_messages(gary: Gary, rec: Recorder, footprint: Footprint) -> None:
    # just over the 64 MiB audio limit but inside the transport's cap: a DATA_TOO_LARGE error, connection kept
    big = "A" * (64 * MiB + 1)
    await expect_error(rec, "restore_processed_audio", {"audio_data": big, "model_name": MODEL, "prompt_duration": 6},
                       "too large", "DATA_TOO_LARGE")
    await expect_error(rec, "process_audio_request", {**GOOD, "audio_data": big}, "too large", "DATA_TOO_LARGE")
    assert rec.client.connected
    mark = rec.mark()
    await rec.emit("update_cropped_audio", {"audio_data": wav_b64(1.0)})
    crop = await rec.wait("update_cropped_audio_complete", after=mark)
    async with httpx.AsyncClient(base_url=keyed(gary)) as http:  # (undo what the good request stored)
        assert (await http.get(f"/api/juce/poll_status/{crop['session_id']}")).status_code == 200
    gary.call(gary.ctx.store.delete(crop["session_id"]))
    # a 100 MB message is beyond what the transport accepts: only that connection is closed; gary carries on
    other = await recorder(f"{gary.url}/?api_key=sekrit")
    try:
        await other.emit("process_audio_request", {**GOOD, "audio_data": "A" * (100 * MiB)})
        for _ in range(100):
            if not other.client.connected:
                break
            await asyncio.sleep(0.1)
        assert not other.client.connected
    finally:
        await other.close()
    await expect_error(rec, "verify_session", {}, "session_id")


async def test_string_payloads(gary: Gary, rec: Recorder) -> None:
    """Swift clients send JSON strings, sometimes with one level of escaping; escaped quotes inside values survive."""
    swift = json.dumps({"audio_data": wav_b64(1.0), "session_id": None}).replace('"', '\\"')
    mark = rec.mark()
    await rec.emit("update_cropped_audio", swift)
    done = await rec.wait("update_cropped_audio_complete", after=mark)
    assert done["auto_created"] is True
    sid = done["session_id"]
    desc = 'say "hi" \\ there'
    mark = rec.mark()
    release = gary.hold_gpu()
    try:
        payload = json.dumps({"session_id": sid, "prompt_duration": 1, "description": desc})
        await rec.emit("continue_music_request", payload)
        await rec.wait("continue_music_received", after=mark)
        job = gary.call(gary.ctx.jobs.current(sid))
        assert job.params["description"] == desc
        # while it runs, the session refuses more work — told to THIS connection, not only to the room
        other = await recorder(f"{gary.url}/?api_key=sekrit")
        try:
            for event, body in (("continue_music_request", {"session_id": sid}),
                                ("retry_music_request", {"session_id": sid}),
                                ("transform_audio_request", {"session_id": sid, "variation": "celtic"}),
                                ("undo_transform_request", {"session_id": sid})):
                await expect_error(other, event, body, "Generation already in progress", "IN_PROGRESS")
        finally:
            await other.close()
    finally:
        release.set()
    await rec.wait("music_continued", after=mark)


def test_http_bad_input(gary: Gary, footprint: Footprint) -> None:
    with httpx.Client(base_url=keyed(gary), timeout=60) as http:
        for route in ("process_audio", "continue_music", "retry_music", "transform_audio", "undo_transform",
                      "update_cropped_audio"):
            r = http.post(f"/api/juce/{route}", content=b"")
            assert r.status_code == 400 and r.json() == {"success": False, "error": "No JSON data received",
                                                         "code": "BAD_REQUEST"}, (route, r.text)
            r = http.post(f"/api/juce/{route}", content=b"{not json")
            assert r.status_code == 400 and "Invalid JSON format" in r.json()["error"], route
            r = http.post(f"/api/juce/{route}", json={"session_id": "../../../etc/passwd", "audio_data": 5})
            assert r.status_code == 400 and r.json()["success"] is False, route
        r = http.post("/api/juce/process_audio", json={**GOOD, "prompt_duration": 45})
        assert r.status_code == 400 and "prompt_duration" in r.json()["error"]
        r = http.post("/api/juce/process_audio", json={**GOOD, "model_name": "mallory/backdoor"})
        assert r.status_code == 403 and r.json()["code"] == "MODEL_NOT_ALLOWED"
        r = http.post("/api/juce/continue_music", json={"model_name": MODEL})
        assert r.status_code == 400 and r.json()["error"] == "Session ID required"
        r = http.post("/api/juce/continue_music", json={"session_id": "nope"})
        assert r.status_code == 404 and r.json()["error"] == "Session not found"
        r = http.post("/api/juce/retry_music", json={"session_id": "nope"})
        assert r.status_code == 404
        r = http.post("/api/juce/transform_audio", json={"variation": "x", "flowstep": 0, "audio_data": wav_b64(1.0)})
        assert r.status_code == 400 and "flowstep" in r.json()["error"]
        r = http.post("/api/juce/update_cropped_audio", json={"session_id": "s1"})
        assert r.status_code == 400 and "audio_data" in r.json()["error"]
        for path in ("poll_status/a%20b", "poll_status/..%2F..%2Fetc", "poll_status/" + "x" * 200):
            r = http.get(f"/api/juce/{path}")
            assert r.status_code in (400, 404) and r.json()["success"] is False, path
        assert http.get("/api/juce/poll_status/unknown-session").status_code == 404
        assert http.get("/api/latest_generated_audio/unknown-session").json()["status"] == "not_found"
        assert http.get("/api/latest_generated_audio/a%20b").status_code == 400
        # 100 MB bodies are refused before they are read, with or without a Content-Length
        huge = b'{"audio_data": "' + b"A" * (100 * MiB) + b'"}'
        r = http.post("/api/juce/process_audio", content=huge, headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["code"] == "DATA_TOO_LARGE"
        r = http.post("/api/juce/process_audio", content=iter([huge[i:i + 4 * MiB] for i in range(0, len(huge), 4 * MiB)]))
        assert r.status_code == 413 and r.json()["code"] == "DATA_TOO_LARGE"
        # the queue callback
        r = http.post("/task_notification", content=b"", headers=signed(b""))
        assert r.status_code == 400 and r.json() == {"status": "error", "message": "No JSON data received"}
        body = json.dumps({"status": "ready"}).encode()
        r = http.post("/task_notification", content=body, headers=signed(body))
        assert r.status_code == 400 and r.json()["message"] == "Missing session_id"
        body = json.dumps({"session_id": "../x", "status": "ready"}).encode()
        r = http.post("/task_notification", content=body, headers=signed(body))
        assert r.status_code == 400
        # API-key protected maintenance routes (absolute URLs: without the /k/ key)
        assert http.post(f"{gary.url}/api/cleanup_old_sessions").status_code == 401
        assert http.post(f"{gary.url}/api/warmup").status_code == 401
        assert http.post(f"{gary.url}/api/warmup", headers={"X-API-Key": "wrong"}).status_code == 401


def test_maintenance_routes_with_key(gary: Gary) -> None:
    with httpx.Client(base_url=gary.url, timeout=60, headers={"X-API-Key": "sekrit"}) as http:
        r = http.post("/api/cleanup_old_sessions")
        assert r.status_code == 200
        body = r.json()
        assert body["status"] == "success" and set(body["cleanup_stats"]) == {
            "mongodb_sessions", "gridfs_files", "redis_keys", "errors", "memory_before_gc", "memory_after_gc"}
        r = http.post("/api/warmup")
        assert r.status_code == 202 and r.json()["success"] is True
        for _ in range(200):
            status = http.get("/api/warmup/status").json()
            if all(s["status"] == "ready" for s in status["status"].values()):
                break
            assert not any(s["status"] == "failed" for s in status["status"].values()), status
            time.sleep(0.1)
        assert status["available"] is True and status["models"] == ["thepatch/hoenn_lofi", "thepatch/bleeps-medium"]
        assert set(status["status"]) == set(status["models"])
    assert set(gary.ctx.runner.engine().resident()) >= {"thepatch/hoenn_lofi", "thepatch/bleeps-medium"}


def test_task_notification_is_idempotent(gary: Gary) -> None:
    """A re-sent notification (same X-Notification-ID) is acknowledged and ignored."""
    sid = asyncio.run(existing_session(gary))
    body = {"session_id": sid, "status": "queued", "type": "process_audio",
            "queue_status": {"estimated_wait_seconds": 12, "active_tasks": 1, "queued_tasks": 3}}
    raw = json.dumps(body).encode()
    with httpx.Client(base_url=keyed(gary)) as http:
        first = http.post("/task_notification", content=raw, headers=signed(raw, "n-1")).json()
        again = http.post("/task_notification", content=raw, headers=signed(raw, "n-1")).json()
        poll = http.get(f"/api/juce/poll_status/{sid}").json()
    assert first["status"] == again["status"] == "received" and first["notification_id"] == "n-1"
    assert again["message"] == "duplicate notification ignored"
    qs = poll["queue_status"]
    assert qs["position"] == 3 and qs["total_queued"] == 4 and qs["estimated_seconds"] == 12.0
    assert qs["estimated_time"] == "about 12 seconds" and qs["notification_id"] == "n-1"
    assert qs["message"] == ("Task queued successfully. You are number 3 in the queue. "
                             "Estimated wait time: about 12 seconds.")
