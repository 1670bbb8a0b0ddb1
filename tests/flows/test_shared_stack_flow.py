"""Several musicians on one stack: two clients interleave their jobs on two sessions without hearing each other's
results, and a second gary process behind the same Redis, gateway and session folder serves the same sessions (a
result made in one reaches a client connected to the other), all in gateway mode."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import redis as redis_sync

from tests.flows.stack_harness import MODEL, Stack, Steps, socketio_client, stack_env, start_service, stop, wait_http, wav_b64

pytestmark = pytest.mark.slow
WAIT = 120.0
RESULT = {"continue": "music_continued", "retry": "music_retried"}


class Musician:
    """One gary4live-like connection that records what it hears."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sio = socketio_client()
        self.heard: list[tuple[str, Any]] = []

        @self.sio.on("*")
        async def record(event: str, data: Any = None) -> None:
            self.heard.append((event, data))

    async def next(self, event: str, session_id: str | None = None, after: int = 0) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + WAIT
        while asyncio.get_running_loop().time() < deadline:
            for name, data in self.heard[after:]:
                if name == "error":
                    raise AssertionError(f"{self.name} got an error: {data}")
                if name == event and (session_id is None or data.get("session_id") == session_id):
                    return data
            await asyncio.sleep(0.05)
        raise AssertionError(f"{self.name}: no {event} for {session_id} in {WAIT:.0f} s")

    def sessions_heard(self) -> set[str]:
        return {d["session_id"] for e, d in self.heard if isinstance(d, dict) and d.get("session_id")
                and e in ("audio_processed", "music_continued", "music_retried", "progress_update", "queue_status")}


@asynccontextmanager
async def musician(name: str, url: str) -> AsyncIterator[Musician]:
    m = Musician(name)
    await m.sio.connect(url, transports=["websocket"], socketio_path="/socket.io")
    try:
        yield m
    finally:
        await m.sio.disconnect()


async def test_two_musicians_interleave_their_sessions(stack: Stack) -> None:
    steps = Steps()
    gary = stack.url("gary")
    async with musician("ana", gary) as ana, musician("ben", gary) as ben:
        with steps.step("both bang"):
            await asyncio.gather(
                ana.sio.emit("process_audio_request", {"audio_data": wav_b64(4.0), "model_name": MODEL, "prompt_duration": 2}),
                ben.sio.emit("process_audio_request", {"audio_data": wav_b64(5.0), "model_name": MODEL, "prompt_duration": 2}))
            a, b = await asyncio.gather(ana.next("audio_processed"), ben.next("audio_processed"))
        sa, sb = a["session_id"], b["session_id"]
        assert sa != sb
        # each button press goes in while the other musician's job is queued or running
        plan = [("continue", "continue"), ("retry", "continue"), ("continue", "retry"), ("retry", "retry")]
        for n, (a_button, b_button) in enumerate(plan, 1):
            with steps.step(f"ana {a_button}s while ben {b_button}s #{n}"):
                ma, mb = len(ana.heard), len(ben.heard)
                await ana.sio.emit(f"{a_button}_music_request", {"session_id": sa, "model_name": MODEL, "prompt_duration": 2})
                await ben.sio.emit(f"{b_button}_music_request", {"session_id": sb, "model_name": MODEL, "prompt_duration": 2})
                await asyncio.gather(ana.next(RESULT[a_button], sa, ma), ben.next(RESULT[b_button], sb, mb))
        assert ana.sessions_heard() == {sa} and ben.sessions_heard() == {sb}  # nobody hears the other's session


@pytest.fixture(scope="module")
def second_gary(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Another `gary-server` on the stack's Redis, gateway, terry and session folder, as a second replica would run."""
    port = stack.ports["gary2"]  # the replica URL the stack's gateway was told to call back
    data = stack.workdir / "data"
    env = stack_env(DEMO_MODELS="1", DATA_DIR=str(data), LOCAL_MODELS_DIR=str(data / "demo-models"),
                    TRANSFER_DIR=str(data / "transfer"), REDIS_URL=stack.redis_url, QUEUE_URL=stack.url("queue"),
                    TERRY_URL=stack.url("terry"), GARY_URL=f"http://127.0.0.1:{port}")
    log = tmp_path_factory.mktemp("gary2") / "gary2.log"
    proc = start_service("gary.cli", port, env, log)
    try:
        wait_http(f"http://127.0.0.1:{port}", proc, log)
        yield f"http://127.0.0.1:{port}", proc
    finally:
        stop(proc)


def _ran_on(stack: Stack, job_id: str) -> str:
    raw = redis_sync.Redis.from_url(stack.redis_url, decode_responses=True).get(f"gary:job:{job_id}")
    assert raw, job_id
    return str(json.loads(raw)["ran_on"])


async def test_a_result_made_in_one_gary_reaches_a_client_of_the_other(stack: Stack, second_gary: Any) -> None:
    steps = Steps()
    url2, proc2 = second_gary
    async with musician("cleo", stack.url("gary")) as cleo, musician("dev", url2) as dev, \
            httpx.AsyncClient(timeout=30) as http:
        with steps.step("bang on the first gary"):
            await cleo.sio.emit("process_audio_request", {"audio_data": wav_b64(4.0), "model_name": MODEL,
                                                          "prompt_duration": 2})
            sid = (await cleo.next("audio_processed"))["session_id"]
        with steps.step("the other gary's client joins the session"):
            await dev.sio.emit("verify_session", {"session_id": sid})
            assert (await dev.next("session_verified", sid))["exists"] is True
        for n in range(1, 4):
            with steps.step(f"continue through the second gary #{n}"):
                mark_c, mark_d = len(cleo.heard), len(dev.heard)
                r = await http.post(f"{url2}/api/juce/continue_music", json={"session_id": sid, "model_name": MODEL,
                                                                            "prompt_duration": 2})
                assert r.status_code == 200, r.text
                made_in_2 = await cleo.next("music_continued", sid, mark_c)  # cleo is connected to the first gary
                await dev.next("music_continued", sid, mark_d)
            assert _ran_on(stack, r.json()["job_id"]).endswith(f":{proc2.pid}")
            assert made_in_2["job_id"] == r.json()["job_id"]
            with steps.step(f"retry through the first gary #{n}"):
                mark_d = len(dev.heard)
                await cleo.sio.emit("retry_music_request", {"session_id": sid, "model_name": MODEL, "prompt_duration": 2})
                made_in_1 = await dev.next("music_retried", sid, mark_d)  # dev is connected to the second gary
            assert not _ran_on(stack, made_in_1["job_id"]).endswith(f":{proc2.pid}")
