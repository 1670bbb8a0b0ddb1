"""gary4beatbox (the phone app) through the real stack: a loop made by jerry starts the session, the app uploads it
in chunks (one chunk lost and resent), continues it three times, and fetches the newest result over HTTP the way it
does after being backgrounded. The app's Swift client sends JSON *strings* with escaped slashes; so does this one."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import httpx
import pytest

from tests.flows.stack_harness import MODEL, STEP_SECONDS, Stack, Steps, socketio_client, wav_seconds

pytestmark = pytest.mark.slow
ROUNDS = 3
CHUNK_CHARS = 64 * 1024  # the app may pick any size up to the server's chunk_size


def swift_json(payload: dict) -> str:
    """What the Swift client emits: a JSON string, with `/` escaped as `\\/`."""
    return json.dumps(payload).replace("/", "\\/")


class App:
    """The app's Socket.IO connection, recording what it hears."""

    def __init__(self) -> None:
        self.sio = socketio_client()
        self.events: list[tuple[str, object]] = []

        @self.sio.on("*")
        async def record(event: str, data: object = None) -> None:
            self.events.append((event, data))

    async def wait(self, event: str, where=lambda d: True, within: float = 120.0) -> dict:
        deadline = time.monotonic() + within
        seen = 0
        while time.monotonic() < deadline:
            for name, data in self.events[seen:]:
                if name == "error":
                    raise AssertionError(f"server error while waiting for {event}: {data}")
                if name == event and where(data):
                    self.events.remove((name, data))
                    return data  # type: ignore[return-value]
            seen = 0
            await asyncio.sleep(0.05)
        raise AssertionError(f"no {event} within {within:.0f} s; heard {[n for n, _ in self.events]}")


async def test_gary4beatbox_restores_in_chunks_continues_and_recovers(stack: Stack) -> None:
    steps = Steps()
    async with httpx.AsyncClient(timeout=60) as http:
        with steps.step("make a loop with jerry"):
            r = await http.post(f"{stack.url('jerry')}/generate/loop", json={
                "prompt": "boom bap drums 90bpm", "bars": 2, "loop_type": "drums", "steps": 4,
                "return_format": "base64", "seed": 11})
            assert r.status_code == 200, r.text
            loop = r.json()["audio_base64"]
        app = App()
        await app.sio.connect(stack.url("gary"), transports=["websocket"], socketio_path="/socket.io")
        try:
            with steps.step("upload the loop in chunks"):
                await app.sio.emit("begin_restore_audio", {})
                ready = await app.wait("ready_for_chunks")
                sid, size = ready["session_id"], min(CHUNK_CHARS, ready["chunk_size"])
                chunks = [loop[i:i + size] for i in range(0, len(loop), size)]
                assert len(chunks) >= 3
                lost = 1
                for i, chunk in enumerate(chunks):
                    if i == lost:
                        continue  # dropped on a flaky phone connection
                    last = i == len(chunks) - 1
                    body = {"session_id": sid, "chunk": chunk, "chunk_index": i, "total_chunks": len(chunks),
                            "is_last": last}
                    if last:
                        body.update(model_name=MODEL, prompt_duration=2)
                    await app.sio.emit("audio_chunk", swift_json(body))
                missing = await app.wait("chunks_missing", lambda d: d["session_id"] == sid)
                assert missing["missing_chunks"] == [lost]
                await app.sio.emit("audio_chunk", swift_json({
                    "session_id": sid, "chunk": chunks[lost], "chunk_index": lost, "total_chunks": len(chunks),
                    "is_last": True, "model_name": MODEL, "prompt_duration": 2}))
                await app.wait("restore_complete", lambda d: d["session_id"] == sid)

            previous = loop
            for n in range(1, ROUNDS + 1):
                with steps.step(f"continue #{n}"):
                    await app.sio.emit("continue_music_request", swift_json({
                        "session_id": sid, "model_name": MODEL, "prompt_duration": 2}))
                    await app.wait("continue_music_received", lambda d: d["session_id"] == sid)
                    result = await app.wait("music_continued", lambda d: d["session_id"] == sid)
                assert wav_seconds(result["audio_data"]) > wav_seconds(previous) - 0.01
                with steps.step(f"fetch the newest audio #{n}"):
                    r = await http.get(f"{stack.url('gary')}/api/latest_generated_audio/{sid}")
                    assert r.status_code == 200, r.text
                assert base64.b64decode(r.json()["audio_data"]) == base64.b64decode(result["audio_data"])
                assert r.json()["model_name"] == MODEL and r.json()["prompt_duration"] == 2
                previous = result["audio_data"]

            with steps.step("backgrounded during a continue"):
                await app.sio.emit("continue_music_request", swift_json({
                    "session_id": sid, "model_name": MODEL, "prompt_duration": 2}))
                await app.wait("continue_music_received", lambda d: d["session_id"] == sid)
                await app.sio.disconnect()  # iOS suspends the app; the job goes on
                codes = []
                deadline = time.monotonic() + STEP_SECONDS * 4
                while time.monotonic() < deadline:
                    r = await http.get(f"{stack.url('gary')}/api/latest_generated_audio/{sid}")
                    codes.append(r.status_code)
                    if r.status_code == 200:
                        break
                    assert r.status_code == 202, r.text  # "in progress", never the previous result
                    await asyncio.sleep(0.25)
                assert codes[-1] == 200 and codes[0] == 202, codes
                assert wav_seconds(r.json()["audio_data"]) > wav_seconds(previous)
        finally:
            if app.sio.connected:
                await app.sio.disconnect()
