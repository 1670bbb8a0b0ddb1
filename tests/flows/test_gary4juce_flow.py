"""gary4juce (VST/AU) through the real stack, over HTTP as the plugin polls: process_audio, then three rounds of
continue -> retry -> transform -> undo, polling `poll_status` after each job and reading every field the plugin reads.
As the plugin does, transform sends no session id (it starts the session the next round continues), so each session
runs several jobs in a row. The seed the plugin sends comes back as `generation_seed` (gary) or `seed` (terry)."""

from __future__ import annotations

import base64
import time
from typing import Any

import httpx
import pytest

from tests.flows.stack_harness import MODEL, Stack, Steps, wav_b64, wav_seconds

pytestmark = pytest.mark.slow
ROUNDS = 3
POLL_EVERY = 0.25  # the plugin polls about every second; faster here only to time steps finely
DONE_WITHIN = 120.0  # a generous wait, so a slow step fails on its bound with a clear message, not here


def check_poll_shape(body: dict[str, Any], session_id: str) -> None:
    """Every field gary4juce reads, with the types it expects, in every state."""
    assert body["success"] is True and body["session_id"] == session_id
    assert isinstance(body["generation_in_progress"], bool) and isinstance(body["transform_in_progress"], bool)
    assert isinstance(body["progress"], int) and 0 <= body["progress"] <= 100
    assert body["status"] in {"queued", "warming", "processing", "completed", "failed"}, body["status"]
    assert body["error"] is None or isinstance(body["error"], str)
    assert body["audio_data"] is None or isinstance(body["audio_data"], str)
    assert isinstance(body["queue_status"], dict)
    if body["queue_status"]:
        qs = body["queue_status"]
        assert {"status", "message", "position", "estimated_seconds"} <= qs.keys(), qs
        assert isinstance(qs["message"], str) and isinstance(qs["position"], int)
    assert set(body["session_data"]) >= {"model_name", "prompt_duration", "parameters", "description"}
    if body["status"] != "completed":
        assert body["audio_data"] is None  # never the previous job's audio while this one runs


def poll_until_done(http: httpx.Client, session_id: str) -> dict[str, Any]:
    """Polls as the plugin does: done = status completed with audio; failed = show the error."""
    deadline = time.monotonic() + DONE_WITHIN
    statuses: list[str] = []
    while True:
        r = http.get(f"/api/juce/poll_status/{session_id}")
        assert r.status_code == 200, r.text
        body = r.json()
        check_poll_shape(body, session_id)
        if not statuses or statuses[-1] != body["status"]:
            statuses.append(body["status"])
        if body["status"] == "completed" and body["audio_data"]:
            assert body["progress"] == 100 and not body["generation_in_progress"] and not body["transform_in_progress"]
            body["_statuses"] = statuses
            return body
        assert body["status"] != "failed", f"job failed: {body['error']} (statuses {statuses})"
        assert time.monotonic() < deadline, f"not done in {DONE_WITHIN:.0f} s; statuses {statuses}"
        time.sleep(POLL_EVERY)


def test_gary4juce_plays_a_session_of_three_rounds(stack: Stack) -> None:
    steps = Steps()
    track = wav_b64(8.0)  # the DAW track the plugin records and sends
    with httpx.Client(base_url=stack.url("gary"), timeout=30) as http:
        with steps.step("process audio"):
            r = http.post("/api/juce/process_audio", json={
                "audio_data": track, "model_name": MODEL, "prompt_duration": 2, "top_k": 250, "temperature": 1.0,
                "cfg_coef": 3.0, "description": None, "seed": 1234})
            assert r.status_code == 200, r.text
            sid = r.json()["session_id"]
            assert r.json()["success"] is True and r.json()["seed"] == 1234
            done = poll_until_done(http, sid)
        assert done["generation_seed"] == 1234 and done["session_data"]["model_name"] == MODEL
        assert wav_seconds(done["audio_data"]) > 8.0

        for n in range(1, ROUNDS + 1):
            with steps.step(f"continue #{n}"):
                r = http.post("/api/juce/continue_music", json={
                    "session_id": sid, "audio_data": track, "model_name": MODEL, "prompt_duration": 2,
                    "seed": 100 + n})
                assert r.status_code == 200 and r.json()["success"] is True, r.text
                continued = poll_until_done(http, sid)
            assert continued["generation_seed"] == 100 + n

            with steps.step(f"retry #{n}"):
                r = http.post("/api/juce/retry_music", json={"session_id": sid, "model_name": MODEL,
                                                             "prompt_duration": 2, "seed": 200 + n})
                assert r.status_code == 200 and r.json()["success"] is True, r.text
                retried = poll_until_done(http, sid)
            assert retried["generation_seed"] == 200 + n
            assert wav_seconds(retried["audio_data"]) == pytest.approx(wav_seconds(continued["audio_data"]), abs=0.05)

            with steps.step(f"transform #{n}"):
                # the plugin sends its audio and no session id: the transform gets a session of its own, which
                # becomes the plugin's current session (its undo, and the next round's continue, use it)
                r = http.post("/api/juce/transform_audio", json={
                    "audio_data": retried["audio_data"], "variation": "synth_retro", "flowstep": 0.13,
                    "solver": "euler", "seed": 300 + n})
                assert r.status_code == 200 and r.json()["success"] is True, r.text
                sid = r.json()["session_id"]
                transformed = poll_until_done(http, sid)
            assert transformed["seed"] == 300 + n and "generation_seed" not in transformed
            assert transformed["audio_data"] != retried["audio_data"]

            with steps.step(f"undo #{n}"):
                r = http.post("/api/juce/undo_transform", json={"session_id": sid})
                assert r.status_code == 200, r.text
                undone = r.json()
            assert undone["success"] is True and undone["session_id"] == sid
            assert base64.b64decode(undone["audio_data"]) == base64.b64decode(retried["audio_data"])

        # a job the queue can't have started yet never shows the previous job's audio (checked in every poll above)
        # and the plugin's stall detector sees queued/processing states, not a silent gap
        assert continued["_statuses"][-1] == "completed"
