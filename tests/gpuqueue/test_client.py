"""garycommon.queueclient against a real gateway: routes per lane, error mapping, and the lease context manager."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import httpx
import pytest
import redis as redis_sync

from garycommon import rediskeys
from garycommon.errors import ErrorCode, GaryError
from garycommon.queueclient import QueueClient
from tests.servers import free_port


async def test_callback_task_calls_per_lane(make_gateway, rdb: redis_sync.Redis) -> None:
    gw = make_gateway(queue_gpus="gpu0=20000", queue_lease_ttl_seconds=30)
    client = QueueClient(gw.url)
    try:
        for lane in ("generation", "transform"):
            out = await client.enqueue(lane, "s1", "process_audio", {"model_name": "facebook/musicgen-medium"},
                                       client_key="user-1")
            assert out["status"] == "processing" and out["lane"] == lane
            task = await client.task(lane, "s1")
            assert task is not None and task["state"] == "granted"
            await client.set_status(lane, "s1", "processing", fencing_token=task["fencing_token"])
            await client.heartbeat(lane, "s1", fencing_token=task["fencing_token"])
            await client.set_status(lane, "s1", "completed", peak_vram_mb=4321)
            assert (await client.task(lane, "s1"))["status"] == "completed"
        assert rdb.hget(rediskeys.gq_task("generation", "s1"), "client") == "open/user-1"
        assert await client.task("generation", "never") is None
        await client.enqueue("generation", "s2", "process_audio", {}, vram_mb=19000)
        await client.enqueue("generation", "s3", "process_audio", {}, vram_mb=19000)
        await client.cancel("generation", "s3")
        assert (await client.task("generation", "s3"))["status"] == "cancelled"
        with pytest.raises(GaryError) as bad:
            await client.enqueue("generation", "s4", "process_audio", {}, vram_mb=-1)
        assert bad.value.code == ErrorCode.VALIDATION_ERROR and bad.value.http_status == 400
        with pytest.raises(GaryError) as unknown:
            await client.enqueue("nolane", "s4", "process_audio", {})
        assert unknown.value.http_status == 404 and "unknown lane" in unknown.value.message
    finally:
        await client.aclose()


async def test_full_queue_and_unreachable_gateway(make_gateway) -> None:
    gw = make_gateway(queue_gpus="gpu0=1000", queue_max_queued=1)
    client = QueueClient(gw.url)
    try:
        await client.enqueue("generation", "a", "process_audio", {}, vram_mb=1000)
        await client.enqueue("generation", "b", "process_audio", {}, vram_mb=1000)
        with pytest.raises(GaryError) as full:
            await client.enqueue("generation", "c", "process_audio", {}, vram_mb=1000)
        assert full.value.code == ErrorCode.QUEUE_FULL and full.value.http_status == 429
        assert full.value.details["retry_after"] >= 1
    finally:
        await client.aclose()
    nobody = QueueClient(f"http://127.0.0.1:{free_port()}", timeout=1.0)
    try:
        with pytest.raises(GaryError) as down:
            await nobody.enqueue("generation", "a", "process_audio", {})
        assert down.value.code == ErrorCode.QUEUE_UNAVAILABLE and down.value.http_status == 503
    finally:
        await nobody.aclose()


async def test_lease_heartbeats_releases_and_reports_failure(make_gateway, rdb: redis_sync.Redis) -> None:
    gw = make_gateway(queue_gpus="gpu0=10000", queue_lease_ttl_seconds=0.6)
    client = QueueClient(gw.url)
    try:
        async with client.lease("facebook/musicgen-large", lane="generation", owner="w1") as lease:
            assert lease.gpu == "gpu0" and lease.vram_mb == 9000 and lease.fencing_token >= 1
            await asyncio.sleep(1.5)  # well past the TTL: the background heartbeat keeps it
            task = rdb.hgetall(rediskeys.gq_task("generation", lease.session_id))
            assert task["state"] == "granted" and int(task["fence"]) == lease.fencing_token
            assert not lease.lost
            lease.peak_vram_mb = 8100
        assert rdb.hget(rediskeys.gq_task("generation", lease.session_id), "state") == "completed"
        assert rdb.hget(rediskeys.gq_gpu_used(), "gpu0") == "0"
        assert rdb.hget(rediskeys.gq_vram_learned(), "facebook/musicgen-large") == "8100"

        with pytest.raises(RuntimeError, match="model exploded"):
            async with client.lease("m", lane="generation", owner="w2", vram_mb=1000) as failing:
                raise RuntimeError("model exploded")
        assert rdb.hget(rediskeys.gq_task("generation", failing.session_id), "state") == "failed"
    finally:
        await client.aclose()


async def test_lease_wait_timeout_withdraws_and_lost_lease_is_flagged(make_gateway, rdb: redis_sync.Redis) -> None:
    gw = make_gateway(queue_gpus="gpu0=10000", queue_lease_ttl_seconds=0.6, queue_poll_ttl_seconds=30)
    client = QueueClient(gw.url)
    try:
        async with client.lease("m", lane="generation", owner="holder", vram_mb=10000) as held:
            with pytest.raises(GaryError) as late:
                async with client.lease("m", lane="generation", owner="waiter", vram_mb=5000, wait_timeout=0.5):
                    pytest.fail("must not be granted")
            assert late.value.code == ErrorCode.TIMEOUT and "position 1" in late.value.message
            assert rdb.zcard(rediskeys.gq_queued("generation")) == 0  # the request was withdrawn
            # an operator (or an expiry) takes the lease away: the holder learns it at its next heartbeat
            rdb_task = rediskeys.gq_task("generation", held.session_id)
            async with httpx.AsyncClient() as http:
                await http.post(f"{gw.url}/leases/{held.id}/release", json={"outcome": "failed", "error": "revoked"})
            assert rdb.hget(rdb_task, "state") == "failed"
            for _ in range(50):
                if held.lost:
                    break
                await asyncio.sleep(0.05)
            assert held.lost
    finally:
        await client.aclose()


def test_gateway_and_client_import_without_torch() -> None:
    """The gateway's image has no torch: none of its modules (nor the shared client) may need it at import."""
    code = ("import sys; sys.modules['torch'] = None\n"
            "import gpuqueue.app, gpuqueue.cli, gpuqueue.vram, garycommon.queueclient\n"
            "from gpuqueue.vram import detect_gpus; print(detect_gpus(0) is not None)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
