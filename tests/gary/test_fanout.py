"""The Socket.IO fan-out between gary processes carries results of any size: a large emit travels by reference, so
Redis never drops a listener for an overfull pub/sub buffer (it did at 32 MB, losing a long result and everything
emitted until the listener reconnected)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess

import pytest
import redis as redis_sync

from gary.fanout import PooledRedisManager
from garycommon.settings import Settings
from tests.servers import free_port, wait_port


@pytest.fixture()
def strict_redis(tmp_path) -> str:
    """A redis-server that drops any pub/sub client with more than 1 MB waiting (the default is 32 MB)."""
    port = free_port()
    proc = subprocess.Popen([shutil.which("redis-server") or "redis-server", "--port", str(port), "--save", "",
                             "--dir", str(tmp_path), "--client-output-buffer-limit", "pubsub 1mb 1mb 0"],
                            stdout=subprocess.DEVNULL)
    try:
        wait_port(port, proc=proc)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


async def test_large_emits_reach_other_processes_and_small_ones_keep_flowing(strict_redis: str) -> None:
    settings = Settings(redis_url=strict_redis)
    sender, receiver = (PooledRedisManager(settings, channel="fanout-test") for _ in range(2))
    received: list[dict] = []
    all_in = asyncio.Event()

    async def listen() -> None:
        async for message in receiver._listen():
            received.append(json.loads(message))
            if len(received) == 4:
                all_in.set()

    task = asyncio.create_task(listen())
    try:
        await asyncio.sleep(0.3)  # subscribed
        big = {"method": "emit", "event": "music_continued", "data": {"audio_data": "x" * (3 * 1024 * 1024)}}
        for n in range(3):
            await sender._publish({**big, "n": n})
        await sender._publish({"method": "emit", "event": "progress_update", "data": {"progress": 5}})
        await asyncio.wait_for(all_in.wait(), 20)
        assert [m.get("n") for m in received] == [0, 1, 2, None]
        assert all(len(m["data"]["audio_data"]) == 3 * 1024 * 1024 for m in received[:3])
        # the listener was never dropped: a single subscription served everything
        clients = redis_sync.Redis.from_url(strict_redis).client_list(_type="pubsub")
        assert len(clients) == 1 and int(clients[0]["id"]) > 0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
