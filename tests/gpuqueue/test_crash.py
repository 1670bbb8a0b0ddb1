"""A worker SIGKILLed mid-lease: the lease is freed within its TTL, the task re-queued once, then failed with a
reason the caller is told about; nothing leaks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import redis as redis_sync

from garycommon import rediskeys
from garycommon.queueclient import QueueClient
from tests.gpuqueue.gq_helpers import CallbackSink, wait_until

WORKER = Path(__file__).with_name("gq_worker.py")
TTL = 1.0
SLACK = 0.6  # reaper interval, scheduling and HTTP on a busy 2-core machine


def spawn(*args: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, str(WORKER), *args], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("running"), line
    return proc


def kill(proc: subprocess.Popen) -> float:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(5)
    return time.monotonic()


def assert_nothing_leaks(rdb: redis_sync.Redis, lanes: tuple[str, ...] = ("generation",)) -> None:
    assert all(v == "0" for v in rdb.hgetall(rediskeys.gq_gpu_used()).values())
    assert all(int(v) == 0 for v in rdb.hgetall(rediskeys.gq_keystats()).values())
    assert rdb.zcard(rediskeys.gq_expiry()) == 0
    assert rdb.scard(rediskeys.gq_resident()) == 0
    for lane in lanes:
        assert rdb.scard(rediskeys.gq_active(lane)) == 0
        assert rdb.zcard(rediskeys.gq_queued(lane)) == 0
        assert rdb.zcard(rediskeys.gq_heads(lane)) == 0


def test_killed_gary_worker_requeued_then_failed_and_caller_told(make_gateway, sink: CallbackSink,
                                                                 http: httpx.Client, rdb: redis_sync.Redis) -> None:
    gw = make_gateway(gary_url=sink.url, queue_lease_ttl_seconds=TTL, queue_max_attempts=2)
    first = http.post(f"{gw.url}/tasks", json={"session_id": "s1", "task_type": "process_audio",
                                               "data": {"model_name": "facebook/musicgen-small"}}).json()
    sink.wait_for(lambda: sink.statuses("s1") == ["ready"])
    fence1 = first["fencing_token"]
    worker = spawn("task", gw.url, "generation", "s1", str(fence1))
    try:
        time.sleep(TTL * 1.5)  # heartbeats keep it alive past the TTL
        assert http.get(f"{gw.url}/tasks/s1").json()["state"] == "processing"
    finally:
        killed = kill(worker)

    # freed within the TTL, re-queued, granted again (the GPU is free): a second `ready` with a new token
    wait_until(lambda: sink.statuses("s1").count("ready") == 2, TTL + SLACK + 2)
    second = http.get(f"{gw.url}/tasks/s1").json()
    assert second["attempts"] == 2 and second["fencing_token"] > fence1
    assert "re-queued" in second["error"]
    expiries = [e for _, e in rdb.xrange(rediskeys.gq_events()) if e["op"] == "expire"]
    assert [(e["tid"], e["gpu"], e["mb"], e["used"]) for e in expiries] == [("generation:s1", "gpu0", "2000", "0")]
    assert time.monotonic() - killed < TTL + SLACK + 2
    # the dead worker's token is refused from now on
    stale = http.post(f"{gw.url}/tasks/s1/heartbeat", json={"fencing_token": fence1})
    assert stale.status_code == 409

    worker = spawn("task", gw.url, "generation", "s1", str(second["fencing_token"]))
    killed = kill(worker)
    wait_until(lambda: "failed" in sink.statuses("s1"), TTL + SLACK + 2)
    freed_after = time.monotonic() - killed
    assert freed_after < TTL + SLACK + 1, freed_after
    final = http.get(f"{gw.url}/tasks/s1").json()
    assert final["status"] == "failed" and "expired 2 times" in final["error"]
    failed = next(n for n in sink.received if n.body["status"] == "failed")
    assert failed.body["session_id"] == "s1" and failed.body["type"] == "process_audio"
    assert "worker running it died" in failed.body["error"]
    statuses = sink.statuses("s1")
    assert statuses[0] == "ready" and statuses[-1] == "failed" and statuses.count("ready") == 2
    assert_nothing_leaks(rdb)
    metrics = http.get(f"{gw.url}/metrics").text
    assert 'gq_leases_expired_total{lane="generation"} 2' in metrics


async def test_killed_lease_holder_frees_vram_for_the_next(make_gateway, rdb: redis_sync.Redis) -> None:
    gw = make_gateway(queue_gpus="gpu0=4000", queue_lease_ttl_seconds=TTL, queue_poll_ttl_seconds=1.0)
    worker = spawn("lease", gw.url, "generation", "crashy-model", "4000")
    client = QueueClient(gw.url)
    try:
        killed = kill(worker)
        # the dead holder's request is re-queued once (first in line), expires again, then fails; we get the GPU
        async with client.lease("next-model", lane="generation", owner="next", vram_mb=4000,
                                wait_timeout=2 * TTL + 4 * SLACK + 2) as lease:
            waited = time.monotonic() - killed
            assert lease.gpu == "gpu0"
            assert waited < 2 * TTL + 4 * SLACK + 1, waited
        crashed = [k for k in rdb.scan_iter(rediskeys.gq_task("generation", "*")) if rdb.hget(k, "owner") == "crash-worker"]
        assert len(crashed) == 1
        assert rdb.hget(crashed[0], "state") == "failed"
        assert "expired" in rdb.hget(crashed[0], "error")
        assert_nothing_leaks(rdb)
    finally:
        await client.aclose()
