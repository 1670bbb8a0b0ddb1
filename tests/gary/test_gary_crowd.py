"""200 musicians bang at once (issue 14, item 7): every client hears either its result or the queue-full error with
a retry hint, never an internal error (a Redis connection pool once ran dry: MaxConnectionsError)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import socketio

from tests.gary.gary_helpers import MODEL, Gary, wav_b64

CLIENTS = 200


@pytest.fixture(scope="module")
def gary(make_gary: Any) -> Gary:
    # the smallest pool that still serves one request at a time: 200 clients must wait for it, not fail
    return make_gary(gary_output_seconds=1.5, redis_max_connections=8)


async def _bang(url: str, audio: str, outcomes: list[tuple[str, Any]]) -> None:
    client = socketio.AsyncClient(reconnection=False)
    done = asyncio.Event()

    @client.on("*")
    async def any_event(event: str, data: Any = None) -> None:
        if event in ("audio_processed", "error"):
            outcomes.append((event, data))
            done.set()

    await client.connect(url, transports=["websocket"], socketio_path="/socket.io", wait_timeout=60)
    try:
        await client.emit("process_audio_request", {"audio_data": audio, "model_name": MODEL, "prompt_duration": 1})
        await asyncio.wait_for(done.wait(), 400)
    finally:
        await client.disconnect()


async def test_two_hundred_clients_bang_at_once(gary: Gary) -> None:
    audio = wav_b64(1.0, rate=8000)
    outcomes: list[tuple[str, Any]] = []
    started = time.monotonic()
    results = await asyncio.gather(*(_bang(gary.url, audio, outcomes) for _ in range(CLIENTS)), return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    assert not failures, failures[:3]
    errors = [data for event, data in outcomes if event == "error"]
    assert all(e["code"] == "QUEUE_FULL" and e.get("retry_after") for e in errors), errors[:3]
    assert len(outcomes) == CLIENTS
    assert sum(1 for event, _ in outcomes if event == "audio_processed") >= CLIENTS // 2, (len(errors), errors[:2])
    print(f"{CLIENTS} clients: {len(errors)} queue-full, {time.monotonic() - started:.1f} s")

