"""The lease calls answered before FastAPI's stack (app.HotRoutes), and the grant publish only long-polls need."""

from __future__ import annotations

import json
import threading
import time

import httpx
import redis as redis_sync

from garycommon import rediskeys
from tests.gpuqueue.gq_helpers import queue_keys

LEASE = {"model": "facebook/musicgen-small", "lane": "generation", "owner": "w", "vram_mb": 1000}


def test_hot_path_hands_everything_unusual_to_the_routes(make_gateway, http: httpx.Client,
                                                         rdb: redis_sync.Redis) -> None:
    url = make_gateway(queue_gpus="gpu0=10000").url
    before = queue_keys(rdb)
    huge = json.dumps({**LEASE, "owner": "w" * 200_000}).encode()
    r = http.post(f"{url}/leases", content=huge, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "over 65536 bytes" in r.json()["error"]

    def chunks(total: int):  # no Content-Length: BodyLimit counts what is streamed
        body = json.dumps({**LEASE, "owner": "w" * total}).encode()
        for i in range(0, len(body), 1024):
            yield body[i:i + 1024]

    r = http.post(f"{url}/leases", content=chunks(100_000), headers={"content-type": "application/json"})
    assert r.status_code == 413
    r = http.post(f"{url}/leases", content=b'{"model": "m",', headers={"content-type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]
    r = http.post(f"{url}/leases", content=json.dumps(LEASE).encode(), headers={"content-type": "text/plain"})
    assert 400 <= r.status_code < 500
    r = http.post(f"{url}/leases/generation:ghost/release", json={"fencing_token": 3})
    assert r.status_code == 404 and "no task" in r.json()["error"]
    assert queue_keys(rdb) == before
    # a small streamed body is fine: the routes answer it like the hot path would
    r = http.post(f"{url}/leases", content=chunks(10), headers={"content-type": "application/json"})
    assert r.status_code == 200 and r.json()["status"] == "granted"
    fast = http.post(f"{url}/leases", json=LEASE).json()
    assert set(fast) == set(r.json()) and fast["status"] == "granted"


def test_only_watched_grants_are_published_and_they_wake_a_waiter_on_another_replica(
        make_gateway, http: httpx.Client, redis_url: str) -> None:
    # poll TTL 60 s: without the publish a waiter would only notice on its 1 s refresh
    a = make_gateway(queue_gpus="gpu0=10000", queue_poll_ttl_seconds=60)
    b = make_gateway(queue_gpus="gpu0=10000", queue_poll_ttl_seconds=60)
    sub = redis_sync.Redis.from_url(redis_url, decode_responses=True).pubsub(ignore_subscribe_messages=True)
    sub.subscribe(rediskeys.gq_granted_channel())
    try:
        big = http.post(f"{a.url}/leases", json={**LEASE, "vram_mb": 9000, "owner": "big"}).json()
        assert big["status"] == "granted"
        time.sleep(0.2)
        assert sub.get_message(timeout=0.3) is None  # granted inline: nobody listens, nothing published
        queued = http.post(f"{a.url}/leases", json={**LEASE, "vram_mb": 5000, "owner": "next"}).json()
        assert queued["status"] == "queued"
        answer: dict[str, object] = {}

        def wait() -> None:
            answer["body"] = http.get(f"{a.url}/leases/{queued['lease_id']}", params={"wait": 10}).json()
            answer["at"] = time.monotonic()

        waiter = threading.Thread(target=wait)
        waiter.start()
        time.sleep(0.5)  # the long-poll is parked on replica a
        released_at = time.monotonic()
        rel = http.post(f"{b.url}/leases/{big['lease_id']}/release", json={"fencing_token": big["fencing_token"]})
        assert rel.status_code == 200
        waiter.join(10)
        assert answer["body"]["status"] == "granted"  # type: ignore[index]
        assert float(answer["at"]) - released_at < 0.5, "the waiter was not woken by the grant's publish"
        msg = sub.get_message(timeout=1.0)
        assert msg is not None and msg["data"] == queued["lease_id"]
    finally:
        sub.close()
