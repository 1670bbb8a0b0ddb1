"""Redis killed and restarted (AOF, fsync always): queue, leases and tokens are all still there, and the gateway
carries on (reconnects, re-sends its scripts) without being restarted itself."""

from __future__ import annotations

import time

import httpx
import redis as redis_sync

from garycommon import rediskeys
from tests.gpuqueue.gq_helpers import CallbackSink, queue_keys, wait_until


def test_queue_and_leases_survive_a_redis_crash(make_gateway, sink: CallbackSink, http: httpx.Client,
                                                rdb: redis_sync.Redis, redis_server) -> None:
    gw = make_gateway(gary_url=sink.url, queue_gpus="gpu0=10000", queue_lease_ttl_seconds=30,
                      queue_poll_ttl_seconds=30)
    a = http.post(f"{gw.url}/tasks", json={"session_id": "a", "task_type": "process_audio", "vram_mb": 8000}).json()
    http.post(f"{gw.url}/tasks", json={"session_id": "b", "task_type": "continue_music", "vram_mb": 5000})
    http.post(f"{gw.url}/tasks", json={"session_id": "c", "task_type": "retry_music", "vram_mb": 2000})
    jerry = http.post(f"{gw.url}/leases", json={"model": "stabilityai/stable-audio-open-small", "lane": "jerry",
                                                "owner": "jerry", "resident": True, "vram_mb": 2000}).json()
    assert a["status"] == "processing" and jerry["status"] == "granted"
    sink.wait_for(lambda: sink.statuses("b") == ["queued"] and sink.statuses("c") == ["queued"])
    wait_until(lambda: rdb.zcard(rediskeys.gq_outbox()) == 0, 5, "outbox drained")
    time.sleep(0.3)
    before = queue_keys(rdb)
    view_before = http.get(f"{gw.url}/queue").json()

    redis_server.stop(sig_kill=True)
    down = http.get(f"{gw.url}/health")
    assert down.status_code == 503 and down.headers["Retry-After"] == "1"
    redis_server.start()

    assert queue_keys(rdb) == before  # every key, byte for byte
    view_after = http.get(f"{gw.url}/queue").json()
    for part in ("gpus", "lanes", "leases"):
        assert view_after[part] == view_before[part], part
    # the gateway works on: fenced heartbeat, completion, the next grant and its callback
    hb = http.post(f"{gw.url}/leases/{jerry['lease_id']}/heartbeat", json={"fencing_token": jerry["fencing_token"]})
    assert hb.status_code == 200, hb.text
    done = http.post(f"{gw.url}/task/status", json={"session_id": "a", "status": "completed",
                                                    "fencing_token": a["fencing_token"]})
    assert done.status_code == 200, done.text
    sink.wait_for(lambda: sink.statuses("b") == ["queued", "ready"])
    b = http.get(f"{gw.url}/tasks/b").json()
    assert b["state"] == "granted" and b["fencing_token"] > jerry["fencing_token"]  # tokens never go back
    assert http.get(f"{gw.url}/tasks/c").json()["state"] == "granted"  # 2000 + 5000 + 2000 fit in 10000
    assert http.get(f"{gw.url}/health").json()["status"] == "ok"
