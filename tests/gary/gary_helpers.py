"""Helpers for gary's tests: test audio and a recording Socket.IO client (servers come from tests/servers.py)."""

from __future__ import annotations

import asyncio
import base64
import io
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import redis
import soundfile as sf

from garycommon.settings import Settings
from tests.servers import ThreadedServer

MODEL = "thepatch/vanya_ai_dnb_0.1"
OUTPUT_SECONDS = 2.0  # short generations keep the suite fast on CPU
LEASE_TTL = 2.0  # the test gateway's lease TTL: a job longer than this lives only through heartbeats


def wav_bytes(seconds: float, rate: int = 44100, channels: int = 2, *, left_hz: float = 220.0, right_hz: float = 330.0,
              subtype: str = "PCM_16") -> bytes:
    """A tone (different pitch per channel, so channel handling is visible)."""
    t = np.arange(int(round(seconds * rate))) / rate
    chans = [0.3 * np.sin(2 * np.pi * left_hz * t), 0.3 * np.sin(2 * np.pi * right_hz * t)][:channels]
    buf = io.BytesIO()
    sf.write(buf, np.stack(chans, axis=1).astype(np.float32), rate, format="WAV", subtype=subtype)
    return buf.getvalue()


def wav_b64(seconds: float = 2.0, rate: int = 44100, channels: int = 2) -> str:
    return base64.b64encode(wav_bytes(seconds, rate, channels)).decode()


def decode_b64_wav(text: str) -> tuple[np.ndarray, int]:
    data, sr = sf.read(io.BytesIO(base64.b64decode(text)), dtype="float32", always_2d=True)
    return data, sr


class Recorder:
    """A real python-socketio AsyncClient (websocket transport, as gary4live) that records every event."""

    def __init__(self) -> None:
        import socketio

        from garycommon.httpapp import WS_MAX_BYTES

        # messages as large as the server's cap: aiohttp's 4 MB default drops the connection on a long result
        self.client = socketio.AsyncClient(reconnection=False, websocket_extra_options={"max_msg_size": WS_MAX_BYTES})
        self.events: list[tuple[str, Any]] = []
        self._changed = asyncio.Event()

        @self.client.on("*")
        async def any_event(event: str, data: Any = None) -> None:
            self.events.append((event, data))
            self._changed.set()

    async def connect(self, url: str) -> Recorder:
        await self.client.connect(url, transports=["websocket"], socketio_path="/socket.io", wait_timeout=15)
        return self

    async def emit(self, event: str, data: Any = None) -> None:
        await self.client.emit(event, data)

    def of(self, name: str) -> list[Any]:
        return [data for event, data in self.events if event == name]

    async def wait(self, name: str, within: float = 60.0, where: Callable[[Any], bool] | None = None,
                   after: int = 0) -> Any:
        """The first `name` event (from index `after` on) matching `where`; fails fast on an unexpected `error`."""
        deadline = time.monotonic() + within
        while True:
            for event, data in self.events[after:]:
                if event == name and (where is None or where(data)):
                    return data
                if event == "error" and name != "error":
                    raise AssertionError(f"server sent error while waiting for {name}: {data}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {name} within {within}s; got {[e for e, _ in self.events]}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.5))
            except TimeoutError:
                pass

    def mark(self) -> int:
        return len(self.events)

    async def close(self) -> None:
        if self.client.connected:
            await self.client.disconnect()


async def recorder(url: str) -> Recorder:
    return await Recorder().connect(url)


class Footprint:
    """What a request could leave behind: session rows, audio files, Redis keys."""

    def __init__(self, gary: Any) -> None:
        self.data_dir = gary.settings.data_dir
        self.redis = redis.Redis.from_url(gary.settings.redis_url)

    def snapshot(self) -> tuple[int, int, set[bytes]]:
        db = self.data_dir / "sessions.sqlite3"
        rows = 0
        if db.exists():
            with sqlite3.connect(db) as conn:
                rows = conn.execute("SELECT count(*) FROM sessions").fetchone()[0]
        files = sum(1 for p in (self.data_dir / "audio").rglob("*.wav")) if (self.data_dir / "audio").exists() else 0
        keys = {k for k in self.redis.scan_iter() if not k.startswith(b"gary:active_generations")}
        return rows, files, keys


class Gary:
    """One running gary: its URL, settings, and the context it serves (for reading state in assertions)."""

    def __init__(self, server: ThreadedServer, settings: Settings) -> None:
        self.server = server
        self.settings = settings

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def ctx(self) -> Any:
        return self.server.app.other_asgi_app.app.state.gary

    def call(self, coro: Any, timeout: float = 30) -> Any:
        return self.server.call(coro, timeout)

    def hold_gpu(self) -> threading.Event:
        """Occupy gary's one GPU worker thread until the returned event is set (jobs then wait in `warming`)."""
        release = threading.Event()
        self.ctx.runner.gpu.submit(release.wait, 60)
        return release


async def expect_error(rec: Recorder, event: str, payload: Any, contains: str, code: str | None = None) -> dict:
    mark = rec.mark()
    await rec.emit(event, payload)
    err = await rec.wait("error", after=mark, within=20)
    assert isinstance(err["message"], str) and contains.lower() in err["message"].lower(), (event, payload, err)
    if code:
        assert err["code"] == code, err
    await asyncio.sleep(0.05)
    unexpected = [e for e, _ in rec.events[mark:] if e not in ("error",)]
    assert not unexpected, f"{event} with bad input also produced {unexpected}"
    return err
