"""Helpers for terry tests: terry's threaded uvicorn servers, test audio, and a Socket.IO client in gary's rooms."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis
import torch

from garycommon.audio import encode_wav
from garycommon.settings import Settings
from tests.servers import ThreadedServer

MODEL = "facebook/melodyflow-t24-30secs"


def serve(app: Any) -> ThreadedServer:
    """terry's test servers: must start within 30 s; graceful shutdown gives open requests 1 s."""
    return ThreadedServer(app, graceful_timeout=1, start_within=30).start()


@dataclass
class Terry:
    server: ThreadedServer
    settings: Settings

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def svc(self) -> Any:
        return self.server.app.state.terry


def wav_b64(seconds: float, rate: int = 44100, channels: int = 2, seed: int = 0) -> str:
    g = torch.Generator().manual_seed(seed)
    n = int(round(seconds * rate))
    t = torch.arange(n) / rate
    tone = 0.3 * torch.sin(2 * torch.pi * 220.0 * t) + 0.05 * torch.randn(n, generator=g)
    wav = tone.expand(channels, -1).clone()
    return base64.b64encode(encode_wav(wav, rate)).decode()


@dataclass
class GarySocketIO:
    """A running gary (its Socket.IO server is where clients sit) and the Redis channel terry emits on."""

    server: ThreadedServer
    redis_url: str
    channel: str

    @property
    def url(self) -> str:
        return self.server.url


@dataclass
class RoomListener:
    """A real python-socketio client in one session's room, recording every event it hears."""

    client: Any
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    stamps: list[float] = field(default_factory=list)

    def of(self, name: str, session_id: str | None = None) -> list[dict[str, Any]]:
        return [data for event, data in self.events
                if event == name and (session_id is None or data.get("session_id") == session_id)]


async def listen(gary: GarySocketIO, rooms: int = 1) -> tuple[RoomListener, list[str]]:
    """A gary4live-like client: connect to gary, get `rooms` fresh sessions whose rooms it joins (gary's
    `begin_restore_audio` creates one and joins it), and wait until an emit through Redis demonstrably reaches
    it. Events are stamped with their arrival time; one connection keeps their order across rooms."""
    import socketio

    from garycommon.progress import RedisRoomEmitter

    client = socketio.AsyncClient(reconnection=False)
    listener = RoomListener(client)

    @client.on("*")
    async def any_event(event: str, data: dict[str, Any]) -> None:
        listener.events.append((event, data))
        listener.stamps.append(time.monotonic())

    await client.connect(gary.url, transports=["websocket"], wait_timeout=10)
    for n in range(rooms):
        await client.emit("begin_restore_audio", {})
        await until(lambda n=n: len(listener.of("ready_for_chunks")) > n, 10, "gary's ready_for_chunks")
    session_ids = [data["session_id"] for data in listener.of("ready_for_chunks")]
    probe = RedisRoomEmitter(gary.redis_url, gary.channel)
    deadline = time.monotonic() + 10
    while len(listener.of("probe")) < len(session_ids):
        assert time.monotonic() < deadline, "Redis fan-out to gary's Socket.IO server never arrived"
        listener.events.clear()
        for session_id in session_ids:
            await probe.emit("probe", {"session_id": session_id}, room=session_id)
        await asyncio.sleep(0.1)
    listener.events.clear()
    listener.stamps.clear()
    return listener, session_ids


async def until(predicate: Callable[[], bool], limit_s: float = 30.0, what: str = "condition") -> None:
    """Poll `predicate` until true (for state owned by another thread, where no awaitable exists)."""
    deadline = time.monotonic() + limit_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def stored_keys(t: Any, session_id: str) -> list[bytes]:
    """Redis keys naming `session_id` in terry's Redis: bad input must leave none."""
    r = redis.Redis.from_url(t.settings.redis_url)
    try:
        return [k for k in r.keys("*") if session_id.encode() in k]
    finally:
        r.close()
