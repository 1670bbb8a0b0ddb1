"""gary behind the real GPU queue gateway (`gpuqueue`): enqueue -> `ready` callback -> run -> status reports; queued
state visible to pollers and Socket.IO clients; heartbeats keep a long job's lease; duplicate `ready`s never start a
job twice; a `ready` gary cannot serve and a job failing before the work starts are both reported `failed`, freeing
the slot (the original left it occupied)."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx
import pytest

from gary.operations import client_key
from garycommon.queueclient import QueueClient
from tests.gary.gary_helpers import LEASE_TTL, MODEL, Gary, recorder, wav_b64


@pytest.fixture(scope="module")
def gary(make_gary: Any, gateway: str, terry_url: str) -> Gary:
    return make_gary(queue_url=gateway, terry_url=terry_url, gary_heartbeat_seconds=0.3)


async def gateway_task(gateway: str, sid: str, lane: str = "") -> dict[str, Any] | None:
    async with httpx.AsyncClient(base_url=gateway) as http:
        r = await http.get(f"{lane}/tasks/{sid}")
    return r.json() if r.status_code == 200 else None


async def until(check: Any, within: float = 30.0) -> Any:
    deadline = time.monotonic() + within
    while not (value := await check()):
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)
    return value


async def test_bang_and_transform_through_the_gateway(gary: Gary, gateway: str) -> None:
    rec = await recorder(gary.url)
    try:
        mark = rec.mark()
        await rec.emit("process_audio_request", {"audio_data": wav_b64(2.0), "model_name": MODEL, "prompt_duration": 1})
        sid = (await rec.wait("process_audio_received", after=mark))["session_id"]
        ready = await rec.wait("queue_status", after=mark, where=lambda d: d["status"] == "ready")
        assert ready["message"] == "Starting generation now..." and ready["notification_id"]
        assert isinstance(ready["position"], int) and isinstance(ready["estimated_seconds"], float)
        result = await rec.wait("audio_processed", after=mark)
        assert result["session_id"] == sid
        task = await until(lambda: _finished(gateway, sid))
        assert task["status"] == "completed"
        # the weights gary keeps loaded between jobs are accounted for by a resident lease on its own lane
        async with httpx.AsyncClient(base_url=gateway) as http:
            leases = (await http.get("/queue")).json()["leases"]
        warm = [x for x in leases if x.get("resident") and x["lane"] == "gary"]
        assert [x["owner"] for x in warm] == [f"gary:resident:{MODEL}"] and warm[0]["vram_mb"] > 0
        assert MODEL in gary.ctx.runner.engine().resident()

        mark = rec.mark()
        await rec.emit("transform_audio_request", {"session_id": sid, "variation": "celtic", "flowstep": 0.1})
        await rec.wait("transform_audio_received", after=mark)
        transformed = await rec.wait("audio_transformed", after=mark, within=120)
        assert transformed["variation"] == "celtic"
        task = await until(lambda: _finished(gateway, sid, "/transform"))
        assert task["status"] == "completed"
    finally:
        await rec.close()


async def _finished(gateway: str, sid: str, lane: str = "") -> dict[str, Any] | None:
    task = await gateway_task(gateway, sid, lane)
    return task if task and task.get("status") in ("completed", "failed") else None


async def test_queued_state_and_heartbeats(gary: Gary, gateway: str) -> None:
    """generation=1 on the gateway: the second bang waits `queued`; the first outlives the lease TTL by heartbeats."""
    listener = await recorder(gary.url)
    release = gary.hold_gpu()
    try:
        async with httpx.AsyncClient(base_url=gary.url, timeout=30) as http:
            first = (await http.post("/api/juce/process_audio", json={"audio_data": wav_b64(2.0), "model_name": MODEL,
                                                                      "prompt_duration": 1})).json()["session_id"]
            mark = listener.mark()
            await listener.emit("process_audio_request", {"audio_data": wav_b64(2.0), "model_name": MODEL,
                                                          "prompt_duration": 1})
            second = (await listener.wait("process_audio_received", after=mark))["session_id"]
            queued = await listener.wait("queue_status", after=mark, where=lambda d: d["status"] == "queued")
            assert queued["session_id"] == second and queued["position"] == 1
            assert queued["message"].startswith("Task queued successfully. You are number 1 in the queue.")

            async def polled_queued() -> dict[str, Any] | None:
                body = (await http.get(f"/api/juce/poll_status/{second}")).json()
                return body if body["queue_status"].get("status") == "queued" else None

            body = await until(polled_queued)
            assert body["status"] == "queued" and body["generation_in_progress"] is True
            assert (await http.get(f"/api/juce/poll_status/{first}")).json()["status"] == "warming"
            async with httpx.AsyncClient(base_url=gateway) as gw:
                leases = (await gw.get("/queue")).json()["leases"]
            # fairness: the gateway sees which client asked (a hash of its address), not just "gary"
            assert [x["client"] for x in leases if x["session_id"] == first] == [f"open/{client_key('127.0.0.1')}"]
            await asyncio.sleep(LEASE_TTL * 1.5)  # longer than the lease: only heartbeats keep it
            assert (await gateway_task(gateway, first))["status"] in ("granted", "processing")
        release.set()
        await listener.wait("audio_processed", after=mark, within=60)
        for sid in (first, second):
            assert (await until(lambda sid=sid: _finished(gateway, sid)))["status"] == "completed"
    finally:
        release.set()
        await listener.close()


async def test_ready_is_idempotent_and_unservable_ready_is_failed(gary: Gary, gateway: str) -> None:
    async with httpx.AsyncClient(base_url=gary.url, timeout=30) as http:
        r = await http.post("/api/juce/process_audio", json={"audio_data": wav_b64(2.0), "model_name": MODEL,
                                                             "prompt_duration": 1})
        sid = r.json()["session_id"]
        await until(lambda: _finished(gateway, sid))
        job = gary.call(gary.ctx.jobs.current(sid))
        assert job.state == "completed"
        # a re-sent `ready` (new notification id) for a finished job starts nothing
        r = await http.post("/task_notification", json={"session_id": sid, "status": "ready", "type": "process_audio"},
                            headers={"X-Notification-ID": uuid.uuid4().hex})
        assert r.status_code == 200
        await asyncio.sleep(0.3)
        assert gary.call(gary.ctx.jobs.current(sid)).updated_at == job.updated_at

    # a task gary knows nothing about (e.g. gary lost it in a crash): its `ready` is answered with `failed`
    queue = QueueClient(gateway)
    try:
        orphan = f"orphan-{uuid.uuid4().hex[:8]}"
        await queue.enqueue("generation", orphan, "process_audio", {}, callback_url=gary.url, model=MODEL, vram_mb=100)
        task = await until(lambda: _finished(gateway, orphan))
        assert task["status"] == "failed"
    finally:
        await queue.aclose()


async def test_failure_before_the_work_is_reported(gary: Gary, gateway: str) -> None:
    """The session vanishes while the job waits in the queue: the client gets an `error`, the gateway `failed`."""
    rec = await recorder(gary.url)
    queue = QueueClient(gateway)
    try:
        async with queue.lease(MODEL, lane="generation", owner="test-blocker", vram_mb=100):  # the lane's one slot
            mark = rec.mark()
            await rec.emit("process_audio_request", {"audio_data": wav_b64(2.0), "model_name": MODEL,
                                                     "prompt_duration": 1})
            sid = (await rec.wait("process_audio_received", after=mark))["session_id"]
            await rec.wait("queue_status", after=mark, where=lambda d: d["status"] == "queued")
            gary.call(gary.ctx.store.delete(sid))
        err = await rec.wait("error", after=mark, within=30)
        assert err["session_id"] == sid and "initial_audio" in err["message"] and err["code"] == "NOT_FOUND"
        assert (await until(lambda: _finished(gateway, sid)))["status"] == "failed"
        assert gary.call(gary.ctx.jobs.current(sid)).state == "failed"
    finally:
        await queue.aclose()
        await rec.close()


async def test_regrant_while_running_adopts_the_new_lease(gary: Gary, gateway: str) -> None:
    """A second `ready` for a job running here updates its lease; the gateway then refusing gary's final status
    (stale fencing token) is only logged: the client still gets its result and no spurious `error`."""
    rec = await recorder(gary.url)
    release = gary.hold_gpu()
    try:
        mark = rec.mark()
        await rec.emit("process_audio_request", {"audio_data": wav_b64(2.0), "model_name": MODEL, "prompt_duration": 1})
        sid = (await rec.wait("process_audio_received", after=mark))["session_id"]
        await until(lambda: _job_state(gary, sid, "warming"))
        async with httpx.AsyncClient(base_url=gary.url) as http:
            r = await http.post("/task_notification", json={"session_id": sid, "status": "ready",
                                                            "type": "process_audio", "lease_id": "x",
                                                            "fencing_token": 999})
        assert r.json()["message"] == "job already running here; lease updated"
    finally:
        release.set()
    try:
        await rec.wait("audio_processed", after=mark, within=60)
        await asyncio.sleep(0.3)
        assert not [d for e, d in rec.events[mark:] if e == "error"]
    finally:
        await rec.close()


async def test_ready_for_a_job_whose_runner_died_runs_it(gary: Gary) -> None:
    from gary.jobs import new_job

    async with httpx.AsyncClient(base_url=gary.url, timeout=30) as http:
        sid = (await http.post("/api/juce/update_cropped_audio", json={"audio_data": wav_b64(2.0)})).json()["session_id"]
        params = {"model_name": MODEL, "prompt_duration": 1, "top_k": 250, "temperature": 1.0, "cfg_coef": 3.0,
                  "description": None, "seed": 3, "output_seconds": gary.settings.gary_output_seconds}
        job = new_job(sid, "continue_music", params, None)
        job.state, job.heartbeat_at = "processing", time.time() - 600  # what a crashed process leaves behind
        gary.call(gary.ctx.jobs.save(job, make_current=True))
        assert gary.call(gary.ctx.jobs.claim(job.job_id))
        assert (await http.get(f"/api/juce/poll_status/{sid}")).json()["status"] == "failed"  # not stuck "processing"
        r = await http.post("/task_notification", json={"session_id": sid, "status": "ready", "type": "continue_music"})
        assert r.json()["message"] == "job started"
        await until(lambda: _job_state(gary, sid, "completed"))
        body = (await http.get(f"/api/juce/poll_status/{sid}")).json()
        assert body["status"] == "completed" and body["generation_seed"] == 3 and body["audio_data"]


async def _job_state(gary: Gary, sid: str, state: str) -> bool:
    job = gary.call(gary.ctx.jobs.current(sid))
    return job is not None and job.state == state


async def test_a_sessions_second_and_third_jobs_start_on_their_first_ready(gary: Gary, gateway: str) -> None:
    """bang -> continue -> retry on one session, each sent the moment the previous result arrives (as gary4live's
    buttons do): every job runs on the gateway's first grant (no lease has to expire first) and none fails."""
    rec = await recorder(gary.url)
    try:
        mark = rec.mark()
        await rec.emit("process_audio_request", {"audio_data": wav_b64(2.0), "model_name": MODEL, "prompt_duration": 1})
        sid = (await rec.wait("process_audio_received", after=mark))["session_id"]
        await rec.wait("audio_processed", after=mark, within=30)
        for request, result in (("continue_music_request", "music_continued"), ("retry_music_request", "music_retried")):
            mark = rec.mark()
            await rec.emit(request, {"session_id": sid, "model_name": MODEL, "prompt_duration": 1})
            await rec.wait(result, after=mark, within=30)
            task = await until(lambda: _finished(gateway, sid))
            assert task["status"] == "completed" and task["attempts"] == 1, task
        assert not rec.of("error")
    finally:
        await rec.close()
