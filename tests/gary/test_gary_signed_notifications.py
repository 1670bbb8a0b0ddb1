"""Issue 13 item 4: with SERVICE_KEY set, gary acts only on /task_notification callbacks signed with it. A forged
`ready` (or `failed`) for a job the gateway still holds as queued changes nothing; the same notification signed as
the gateway signs it starts the job. (This gateway signs nothing: it stands for a forger that can reach gary.)"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest

from garycommon.keys import SIGNATURE_HEADER, sign
from tests.gary.gary_helpers import MODEL, Gary, recorder, wav_b64

SERVICE = "gary-test-service-key"


@pytest.fixture(scope="module")
def gary(make_gary: Any, gateway: str) -> Gary:
    return make_gary(queue_url=gateway, service_key=SERVICE)


def _state(gary: Gary, sid: str) -> str | None:
    job = gary.call(gary.ctx.jobs.current(sid))
    return job.state if job is not None else None


async def test_only_signed_notifications_start_or_fail_jobs(gary: Gary, gateway: str) -> None:
    rec = await recorder(gary.url)
    try:
        mark = rec.mark()
        await rec.emit("process_audio_request", {"audio_data": wav_b64(2.0), "model_name": MODEL, "prompt_duration": 1})
        sid = (await rec.wait("process_audio_received", after=mark))["session_id"]
        async with httpx.AsyncClient(base_url=gateway) as http:
            deadline = time.monotonic() + 20
            while (task := (await http.get(f"/tasks/{sid}")).json()).get("fencing_token") is None:
                assert time.monotonic() < deadline, task
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # the gateway's own (unsigned) `ready` has been refused by now
        assert _state(gary, sid) == "queued"
        job_id = gary.call(gary.ctx.jobs.current(sid)).job_id
        ready = {"session_id": sid, "status": "ready", "type": "process_audio", "lease_id": task["lease_id"],
                 "fencing_token": task["fencing_token"], "job_id": job_id}
        async with httpx.AsyncClient(base_url=gary.url) as http:
            for status, nid in (("failed", "forged-1"), ("ready", "forged-2")):
                body = json.dumps({**ready, "status": status, "error": "forged"}).encode()
                for headers in ({}, {SIGNATURE_HEADER: sign("a-guessed-key", nid, body)},
                                {SIGNATURE_HEADER: sign(SERVICE, nid, body, now=time.time() - 3600)},
                                {SIGNATURE_HEADER: sign(SERVICE, "another-id", body)}):
                    r = await http.post("/task_notification", content=body,
                                        headers={"X-Notification-ID": nid, "content-type": "application/json", **headers})
                    assert r.status_code == 401 and "signature" in r.json()["message"].lower(), r.text
                    assert _state(gary, sid) == "queued"
            body = json.dumps(ready).encode()
            r = await http.post("/task_notification", content=body, headers={
                "X-Notification-ID": "genuine-1", "content-type": "application/json",
                SIGNATURE_HEADER: sign(SERVICE, "genuine-1", body)})
            assert r.status_code == 200 and r.json()["message"] == "job started", r.text
        result = await rec.wait("audio_processed", after=mark, within=60)
        assert result["session_id"] == sid
    finally:
        await rec.close()
