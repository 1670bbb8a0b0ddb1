"""A dead Mongo (issue 14, item 13): loud in the log at start and while it lasts (not once per request), told in
/health, and one short sentence to clients, answered at once once the outage is known."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import httpx
import pytest

from tests.gary.gary_helpers import MODEL, recorder, wav_b64
from tests.servers import free_port


@pytest.fixture(scope="module")
def dead(make_gary: Any) -> Any:
    return make_gary(session_store="mongo", mongodb_url=f"mongodb://127.0.0.1:{free_port()}/")


async def test_dead_mongo_is_loud_to_the_operator_and_short_to_clients(dead: Any, caplog: pytest.LogCaptureFixture
                                                                       ) -> None:
    caplog.set_level(logging.ERROR, logger="gary.sessions")
    deadline = time.monotonic() + 20
    while not any("SESSION DATABASE UNREACHABLE" in r.getMessage() for r in caplog.records):
        assert time.monotonic() < deadline, "no loud log line about the dead session database"
        await asyncio.sleep(0.2)
    async with httpx.AsyncClient(base_url=dead.url, timeout=30) as http:
        health = await http.get("/health")
        assert health.json()["status"] == "degraded" and health.json()["mongodb"].startswith("down"), health.text
        body = {"audio_data": wav_b64(1.0), "model_name": MODEL, "prompt_duration": 1}
        for _ in range(3):
            started = time.monotonic()
            r = await http.post("/api/juce/process_audio", json=body)
            assert r.status_code == 503 and r.json()["code"] == "SERVICE_UNAVAILABLE", r.text
            assert len(r.json()["error"]) < 120 and "Topology" not in r.json()["error"], r.json()["error"]
            assert time.monotonic() - started < 2  # known down: no 5 s server-selection wait per request
    rec = await recorder(dead.url)
    try:
        await rec.emit("process_audio_request", body)
        err = await rec.wait("error", within=20)
        assert err["code"] == "SERVICE_UNAVAILABLE" and len(err["message"]) < 120, err
    finally:
        await rec.close()
    loud = [r for r in caplog.records if "SESSION DATABASE UNREACHABLE" in r.getMessage()]
    assert len(loud) == 1, "logged once per outage (and again each minute), not once per request"
