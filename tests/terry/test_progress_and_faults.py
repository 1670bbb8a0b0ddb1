"""Progress coalescing through the real Redis + Socket.IO chain, GPU-OOM mapping, and `terry-server --demo`."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as aioredis
import torch

from garycommon.progress import RedisRoomEmitter, StatusStore
from garycommon.settings import Settings
from terry.progress import TransformProgress
from tests.servers import free_port
from tests.terry.terry_helpers import GarySocketIO, listen, serve, wav_b64


async def test_progress_is_coalesced_capped_and_finished_with_100(gary: GarySocketIO) -> None:
    """500 engine callbacks in ~0.5 s become a handful of writes/emits, never above 99.9 until the end."""
    room, (sid,) = await listen(gary)
    r = aioredis.Redis.from_url(gary.redis_url)
    try:
        progress = TransformProgress(sid, StatusStore(r), RedisRoomEmitter(gary.redis_url, gary.channel),
                                     min_interval=0.1)
        await progress.start()

        def engine() -> None:
            for i in range(500):
                progress.report(i * 0.25)  # up to 124.75: an engine overshooting must still be capped
                time.sleep(0.001)

        worker = threading.Thread(target=engine)
        started = time.monotonic()
        worker.start()
        await asyncio.to_thread(worker.join)
        elapsed = time.monotonic() - started
        await progress.finish(success=True)
        await asyncio.sleep(0.3)
        values = [p["progress"] for p in room.of("progress_update", sid)]
        assert values[-1] == 100.0 and values[:-1] and max(values[:-1]) == 99.9
        assert values == sorted(values) and len(values) <= elapsed / 0.1 + 3, values
        assert values == progress.sent
        assert await r.get(f"progress:{sid}") == b"100"
        assert b'"processing"' in await r.get(f"status:{sid}")
    finally:
        await room.client.disconnect()
        await r.aclose()


async def test_progress_survives_a_dead_redis() -> None:
    """Progress is best effort: an unreachable Redis is logged, never fails the transform."""
    dead = "redis://127.0.0.1:9/0"
    r = aioredis.Redis.from_url(dead, socket_connect_timeout=0.2)
    progress = TransformProgress("nobody", StatusStore(r), RedisRoomEmitter(dead, "flask-socketio"), min_interval=0.01)
    await progress.start()
    progress.report(50.0)
    await progress.finish(success=True)
    assert progress.sent == [50.0, 100.0]
    await r.aclose()


def test_gpu_out_of_memory_is_503_not_400(redis_server: Any, tmp_path: Path) -> None:
    """The original answered 400 for an OOM; a model that cannot fit is the server's problem (503)."""
    from terry.app import create_app

    def loader() -> Any:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 4.00 GiB")

    settings = Settings(redis_url=redis_server.url, queue_url="", transfer_dir=tmp_path, device="cpu",
                        log_level="WARNING")
    server = serve(create_app(settings, loader=loader))
    try:
        resp = httpx.post(f"{server.url}/transform", json={"session_id": "oom", "variation": "celtic",
                                                            "audio": wav_b64(1.5)}, timeout=30)
        assert resp.status_code == 503 and resp.json()["code"] == "GPU_OOM", resp.text
        assert "out of memory" in resp.json()["error"]
        assert httpx.get(f"{server.url}/health", timeout=10).status_code == 503
    finally:
        server.stop()


def test_cli_demo_mode_is_announced_in_logs_health_and_metadata(
    terry_models: Path, redis_server: Any, tmp_path: Path
) -> None:
    port = free_port()
    env = {**os.environ, "REDIS_URL": redis_server.url, "QUEUE_URL": "", "LOCAL_MODELS_DIR": str(terry_models),
           "TRANSFER_DIR": str(tmp_path), "DATA_DIR": str(tmp_path), "DEVICE": "cpu"}
    proc = subprocess.Popen([sys.executable, "-m", "terry.cli", "--demo", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                health = httpx.get(f"{url}/health", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "terry-server --demo did not come up"
                time.sleep(0.2)
        assert health.status_code == 200 and health.json()["demo"] is True and health.json()["status"] == "healthy"
        resp = httpx.post(f"{url}/transform", json={"session_id": "demo", "variation": "chiptune",
                                                     "audio": wav_b64(1.2), "steps": 2}, timeout=60)
        assert resp.status_code == 200 and resp.json()["metadata"]["demo"] is True
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert "DEMO MODE" in out and "Traceback" not in out
    assert proc.returncode in (0, -15)  # uvicorn re-raises the SIGTERM it handled gracefully

