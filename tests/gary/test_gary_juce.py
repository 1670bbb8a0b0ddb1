"""gary4juce's HTTP flow (docs/gary-juce.md) with a real HTTP client against a real gary on both session stores:
process_audio -> poll until completed with audio_data -> continue -> retry -> transform -> undo, with the queued and
warming states visible in poll_status and the plugin's seed echoed as `generation_seed`."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from typing import Any

import httpx
import numpy as np
import pytest

from tests.gary.gary_helpers import MODEL, OUTPUT_SECONDS, Gary, decode_b64_wav, recorder, wav_b64

POLL_KEYS = {"success", "session_id", "generation_in_progress", "transform_in_progress", "progress", "status", "error",
             "audio_data", "queue_status", "session_data"}


@pytest.fixture(scope="module", params=["sqlite", "mongo"])
def gary(request: pytest.FixtureRequest, make_gary: Any, terry_url: str) -> Gary:
    if request.param == "mongo":
        mongo = request.getfixturevalue("mongo_server")
        return make_gary(session_store="mongo", mongodb_url=mongo.url, mongodb_db=f"juce_{uuid.uuid4().hex[:8]}",
                         terry_url=terry_url, gary_max_batch=1)
    return make_gary(terry_url=terry_url, gary_max_batch=1)  # one generation at a time: the second one queues


async def poll(http: httpx.AsyncClient, sid: str) -> dict[str, Any]:
    r = await http.get(f"/api/juce/poll_status/{sid}")
    assert r.status_code == 200, r.text
    body = r.json()
    assert POLL_KEYS <= body.keys()
    return body


async def poll_until_done(http: httpx.AsyncClient, sid: str, within: float = 60) -> dict[str, Any]:
    """The plugin's rule: done = status completed + non-empty audio_data; failed = show error."""
    deadline = time.monotonic() + within
    while True:
        body = await poll(http, sid)
        assert body["status"] != "failed", body["error"]
        if body["status"] == "completed" and body["audio_data"]:
            return body
        assert body["audio_data"] is None, "no audio while a job is pending (never the previous run's)"
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.1)


async def test_juce_flow(gary: Gary) -> None:
    async with httpx.AsyncClient(base_url=gary.url, timeout=30) as http:
        release = gary.hold_gpu()
        try:
            r = await http.post("/api/juce/process_audio", json={
                "audio_data": wav_b64(3.0), "model_name": MODEL, "prompt_duration": 1, "top_k": 250,
                "temperature": 1.0, "cfg_coef": 3.0, "description": "", "seed": 1234})
            assert r.status_code == 200, r.text
            first = r.json()
            assert first["success"] is True and first["seed"] == 1234 and isinstance(first["message"], str)
            sid = first["session_id"]
            r = await http.post("/api/juce/process_audio", json={
                "audio_data": wav_b64(2.0), "model_name": MODEL, "prompt_duration": 1, "seed": -1})
            second = r.json()
            assert isinstance(second["seed"], int) and second["seed"] >= 0  # -1: the server picks, and says which

            # the first job holds the (occupied) GPU worker: warming; the second waits in the queue behind it
            deadline = time.monotonic() + 10
            while (warm := await poll(http, sid))["status"] != "warming":
                assert time.monotonic() < deadline, warm
                await asyncio.sleep(0.05)
            assert warm["generation_in_progress"] is True and warm["transform_in_progress"] is False
            assert warm["audio_data"] is None and warm["progress"] == 0
            assert warm["queue_status"]["status"] == "warming" and MODEL in warm["queue_status"]["message"]
            queued = await poll(http, second["session_id"])
            assert queued["status"] == "queued" and queued["generation_in_progress"] is True
            qs = queued["queue_status"]
            assert qs["status"] == "queued" and qs["position"] == 1 and "number 1 in the queue" in qs["message"]
            assert isinstance(qs["estimated_time"], str) and isinstance(qs["estimated_seconds"], float)
            r = await http.get(f"/api/latest_generated_audio/{sid}")
            assert r.status_code == 202 and r.json()["status"] == "in_progress"
        finally:
            release.set()

        done = await poll_until_done(http, sid)
        assert done["progress"] == 100 and done["generation_seed"] == 1234 and done["seed"] == 1234
        assert done["error"] is None and done["generation_in_progress"] is False
        assert done["session_data"] == {"model_name": MODEL, "prompt_duration": 1,
                                        "parameters": {"top_k": 250, "temperature": 1.0, "cfg_coef": 3.0},
                                        "description": None}
        audio, sr = decode_b64_wav(done["audio_data"])
        assert sr == 44100 and audio.shape == (int(OUTPUT_SECONDS * 44100), 2)
        assert (await poll_until_done(http, second["session_id"]))["generation_seed"] == second["seed"]
        latest = (await http.get(f"/api/latest_generated_audio/{sid}")).json()
        assert latest == {"status": "success", "audio_data": done["audio_data"], "model_name": MODEL,
                          "prompt_duration": 1, "session_id": sid}

        # continue: new parameters are used AND remembered (the original's HTTP continue ignored them)
        r = await http.post("/api/juce/continue_music", json={"session_id": sid, "prompt_duration": 1, "top_k": 100,
                                                              "cfg_coef": 4.5, "seed": 99})
        assert r.status_code == 200 and r.json()["seed"] == 99
        continued = await poll_until_done(http, sid)
        assert continued["generation_seed"] == 99 and continued["audio_data"] != done["audio_data"]
        assert continued["session_data"]["parameters"] == {"top_k": 100, "temperature": 1.0, "cfg_coef": 4.5}
        assert decode_b64_wav(continued["audio_data"])[0].shape[0] == int((OUTPUT_SECONDS - 1 + OUTPUT_SECONDS) * 44100)

        # retry without model/prompt: the stored ones stay (the original wrote nulls); never a stale `completed`
        release = gary.hold_gpu()
        try:
            r = await http.post("/api/juce/retry_music", json={"session_id": sid})
            assert r.status_code == 200, r.text
            pending = await poll(http, sid)
            assert pending["status"] in {"queued", "warming"} and pending["audio_data"] is None
            assert pending["progress"] == 0 and pending["generation_in_progress"] is True
        finally:
            release.set()
        retried = await poll_until_done(http, sid)
        assert retried["session_data"]["model_name"] == MODEL and retried["session_data"]["prompt_duration"] == 1
        assert retried["generation_seed"] not in (99, None)

        # transform through terry (HTTP: no session id is sent by the plugin, so a new session is made)
        r = await http.post("/api/juce/transform_audio", json={"audio_data": retried["audio_data"], "flowstep": 0.1,
                                                                "solver": "euler", "variation": "lofi_chill",
                                                                "seed": 5})
        assert r.status_code == 200, r.text
        tr = r.json()
        assert tr["success"] and tr["seed"] == 5 and tr["info"]["variation"] == "lofi_chill"
        transformed = await poll_until_done(http, tr["session_id"], within=120)
        assert transformed["transform_in_progress"] is False and transformed["seed"] == 5
        assert "generation_seed" not in transformed

        # undo the transform: back to its input
        r = await http.post("/api/juce/undo_transform", json={"session_id": tr["session_id"]})
        assert r.status_code == 200
        assert r.json() == {"success": True, "session_id": tr["session_id"], "message": "Transform undone",
                            "audio_data": retried["audio_data"]}
        # undo of the retry on the first session: back to the retry's input (the first result)
        r = await http.post("/api/juce/undo_transform", json={"session_id": sid})
        assert r.json()["audio_data"] == done["audio_data"]
        assert (await poll(http, sid))["audio_data"] == done["audio_data"]

        # continue with audio and no session: a fresh session each time
        body = {"audio_data": wav_b64(2.0), "model_name": MODEL, "prompt_duration": 1}
        a = (await http.post("/api/juce/continue_music", json=body)).json()
        b = (await http.post("/api/juce/continue_music", json=body)).json()
        assert a["session_id"] != b["session_id"]
        for new in (a, b):
            doc = gary.call(gary.ctx.store.get(new["session_id"]))
            assert doc["created_from"] == "juce_continue"
            await poll_until_done(http, new["session_id"])


async def test_models_health_banner(gary: Gary) -> None:
    async with httpx.AsyncClient(base_url=gary.url, timeout=10) as http:
        r = await http.get("/")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")  # the web console
        assert "/console/console.js" in r.text
        health = (await http.get("/health")).json()
        assert health["status"] == "live" and health["redis"] == "live" and health["mongodb"] == "live"
        assert health["demo"] is True and health["queue"] == "solo"
        models = (await http.get("/api/models")).json()
    assert models["success"] is True and models["updated_at"]
    small, medium, large = (models["models"][k] for k in ("small", "medium", "large"))
    assert small[0] == {"name": "vanya_ai_dnb_0.1", "path": "thepatch/vanya_ai_dnb_0.1", "type": "single"}
    assert small[1] == {"name": "gary_orchestra_2", "path": "thepatch/gary_orchestra_2", "type": "single"}
    assert small[2] == {"name": "keygen-gary-v2-small", "type": "group", "checkpoints": [
        {"name": "keygen-gary-v2-small-8", "path": "thepatch/keygen-gary-v2-small-8", "epoch": 8},
        {"name": "keygen-gary-v2-small-12", "path": "thepatch/keygen-gary-v2-small-12", "epoch": 12}]}
    assert [c["epoch"] for c in small[3]["checkpoints"]] == [6, 12, 20] and len(small) == 4
    assert [e["name"] for e in medium] == ["bleeps-medium", "keygen-gary-medium"]
    assert [e["name"] for e in large] == ["hoenn_lofi", "bleeps-large", "keygen-gary-large", "keygen-gary-v2-large"]
    assert [c["epoch"] for c in large[1]["checkpoints"]] == [6, 8, 10, 14, 20]
    assert [c["path"] for c in large[3]["checkpoints"]] == ["thepatch/keygen-gary-v2-large-12",
                                                            "thepatch/keygen-gary-v2-large-16"]


def test_result_is_stereo_when_the_input_is(gary: Gary) -> None:
    """Bang and continue keep the input's channel layout (the original's bang returned mono)."""
    with httpx.Client(base_url=gary.url, timeout=30) as http:
        sid = http.post("/api/juce/process_audio", json={"audio_data": wav_b64(2.0, rate=22050, channels=1),
                                                         "model_name": MODEL, "prompt_duration": 1}).json()["session_id"]
        deadline = time.monotonic() + 60
        while not (body := http.get(f"/api/juce/poll_status/{sid}").json())["audio_data"]:
            assert body["status"] != "failed" and time.monotonic() < deadline
            time.sleep(0.1)
    audio, sr = decode_b64_wav(body["audio_data"])
    assert sr == 22050 and audio.shape == (int(OUTPUT_SECONDS * 22050), 1) and np.isfinite(audio).all()
    assert base64.b64decode(body["audio_data"])[:4] == b"RIFF"


def test_concurrent_generations_share_one_engine_call(make_gary: Any) -> None:
    """Solo mode with GARY_MAX_BATCH=3: jobs arriving while the GPU is busy run together in its next call.

    The first job is sent alone and waits in the GPU worker's line before the others are sent, so nothing was on
    its way when it got there (a burst sent at once would share one call: tests/garycommon/test_gpuworker.py)."""
    gary = make_gary(gary_max_batch=3)
    release = gary.hold_gpu()
    with httpx.Client(base_url=gary.url, timeout=30) as http:
        try:
            sids = []
            for i in range(3):
                sids.append(http.post("/api/juce/process_audio", json={
                    "audio_data": wav_b64(2.0 + i / 2), "model_name": MODEL, "prompt_duration": 1,
                    "seed": 10 + i}).json()["session_id"])
                deadline = time.monotonic() + 10
                while i == 0 and gary.ctx.runner.gpu.pending() < 1:  # the first is in line behind the held call
                    assert time.monotonic() < deadline, "the first generation never reached the GPU worker"
                    time.sleep(0.02)
            deadline = time.monotonic() + 10
            while any(http.get(f"/api/juce/poll_status/{s}").json()["status"] != "warming" for s in sids):
                assert time.monotonic() < deadline, "all three should be running (not queued) with 3 slots"
                time.sleep(0.05)
        finally:
            release.set()
        done = []
        for sid in sids:
            deadline = time.monotonic() + 60
            while not (body := http.get(f"/api/juce/poll_status/{sid}").json())["audio_data"]:
                assert body["status"] != "failed" and time.monotonic() < deadline, body
                time.sleep(0.1)
            done.append(body)
    jobs = [gary.call(gary.ctx.jobs.current(sid)) for sid in sids]
    # the first went alone (it never waits for company); the two that arrived meanwhile shared the next call
    assert [job.result["batch_size"] for job in jobs] == [1, 2, 2]
    assert [d["generation_seed"] for d in done] == [10, 11, 12] and len({d["audio_data"] for d in done}) == 3
    for i, d in enumerate(done):  # each keeps its own input's length rules (bang: the output length)
        assert decode_b64_wav(d["audio_data"])[0].shape[0] == int(OUTPUT_SECONDS * 44100), i


async def test_transform_inline_audio_and_relayed_terry_errors(make_gary: Any, terry_url: str, tmp_path: Any) -> None:
    """Without a writable transfer folder the input goes inline; terry's own error message reaches the client, and an
    unreachable terry reads as gary4live's "terry is asleep" (its message names the failed connection)."""
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the transfer folder should be")
    gary = make_gary(terry_url=terry_url, transfer_dir=blocked / "transfer")
    asleep = make_gary(terry_url="http://127.0.0.1:9")
    rec = await recorder(gary.url)
    try:
        mark = rec.mark()
        await rec.emit("transform_audio_request", {"audio_data": wav_b64(1.5), "variation": "jungle_breaks"})
        done = await rec.wait("audio_transformed", after=mark, within=120)
        assert done["variation"] == "jungle_breaks" and done["metadata"]["variation"] == "jungle_breaks"
        mark = rec.mark()
        await rec.emit("transform_audio_request", {"session_id": done["session_id"], "variation": "no_such_style"})
        err = await rec.wait("error", after=mark, within=60)
        assert err["message"].startswith("terry: ") and "no_such_style" in err["message"]
        assert err["session_id"] == done["session_id"]
        async with httpx.AsyncClient(base_url=gary.url) as http:
            poll = (await http.get(f"/api/juce/poll_status/{done['session_id']}")).json()
        assert poll["status"] == "failed" and poll["error"] == err["message"] and poll["audio_data"] is None
    finally:
        await rec.close()
    rec = await recorder(asleep.url)
    try:
        await rec.emit("transform_audio_request", {"audio_data": wav_b64(1.5), "variation": "celtic"})
        err = await rec.wait("error", within=60)
        assert "Failed to establish a new connection" in err["message"] and err["code"] == "SERVICE_UNAVAILABLE"
    finally:
        await rec.close()
