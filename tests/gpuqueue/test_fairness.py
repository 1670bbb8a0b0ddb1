"""Grant order: FIFO within a client, round-robin between clients, bounded bypass of a big head job."""

from __future__ import annotations

import httpx
import redis as redis_sync

from garycommon import rediskeys
from tests.gpuqueue.gq_helpers import wait_until


def _lease(http: httpx.Client, url: str, mb: int, client: str, lane: str = "generation") -> dict:
    r = http.post(f"{url}/leases", json={"model": f"m{mb}", "lane": lane, "owner": client, "vram_mb": mb,
                                         "client_key": client})
    assert r.status_code == 200, r.text
    return r.json()


def _release(http: httpx.Client, url: str, lease: dict) -> None:
    r = http.post(f"{url}/leases/{lease['lease_id']}/release", json={"outcome": "completed"})
    assert r.status_code == 200, r.text


def _state(http: httpx.Client, url: str, lease: dict) -> str:
    return http.get(f"{url}/leases/{lease['lease_id']}").json()["status"]


def test_round_robin_between_clients_fifo_within(make_gateway, http: httpx.Client) -> None:
    """One slot (each task takes the whole GPU): A's backlog interleaves with B and C instead of running first."""
    gw = make_gateway(queue_gpus="gpu0=5000", queue_poll_ttl_seconds=30)
    leases = {}
    for i in range(1, 6):
        leases[f"A{i}"] = _lease(http, gw.url, 5000, "A")
    for i in range(1, 4):
        leases[f"B{i}"] = _lease(http, gw.url, 5000, "B")
    for i in range(1, 3):
        leases[f"C{i}"] = _lease(http, gw.url, 5000, "C")
    assert leases["A1"]["status"] == "granted"
    # positions predicted for the round-robin order, not arrival order
    assert http.get(f"{gw.url}/leases/{leases['B1']['lease_id']}").json()["position"] == 2
    assert http.get(f"{gw.url}/leases/{leases['C2']['lease_id']}").json()["position"] == 6
    order = ["A1"]
    current = "A1"
    for _ in range(len(leases) - 1):
        _release(http, gw.url, leases[current])
        granted = [name for name, lease in leases.items() if name not in order and _state(http, gw.url, lease) == "granted"]
        assert len(granted) == 1, granted
        current = granted[0]
        order.append(current)
    # A went to the back of the line when A1 was granted, before B and C arrived; then strict rotation
    assert order == ["A1", "A2", "B1", "C1", "A3", "B2", "C2", "A4", "B3", "A5"]


def test_big_head_job_is_bypassed_at_most_max_bypass_times(make_gateway, http: httpx.Client,
                                                           rdb: redis_sync.Redis) -> None:
    gw = make_gateway(queue_gpus="gpu0=10000", queue_max_bypass=3, queue_poll_ttl_seconds=30)
    running = [_lease(http, gw.url, 2000, "early") for _ in range(2)]  # 4000 used
    big = _lease(http, gw.url, 9000, "big")
    assert big["status"] == "queued"
    smalls = [_lease(http, gw.url, 2000, "small") for _ in range(8)]
    # three smalls overtake the big job while it cannot fit (6000 free), then its GPU takes nothing else
    granted = [s for s in smalls if s["status"] == "granted"]
    assert len(granted) == 3
    assert int(rdb.hget(rediskeys.gq_task("generation", big["session_id"]), "bypassed")) == 3
    # freeing one small would let another small in, but the big job now has priority
    _release(http, gw.url, granted[0])
    assert [_state(http, gw.url, s) for s in smalls[3:]] == ["queued"] * 5
    for lease in running + granted[1:]:
        _release(http, gw.url, lease)
    wait_until(lambda: _state(http, gw.url, big) == "granted", 5)
    assert [_state(http, gw.url, s) for s in smalls[3:]] == ["queued"] * 5  # 1000 MB left: none fits beside it
    _release(http, gw.url, big)
    wait_until(lambda: sum(_state(http, gw.url, s) == "granted" for s in smalls[3:]) == 5, 5)


def test_bypass_only_counts_on_gpus_the_big_job_could_use(make_gateway, http: httpx.Client) -> None:
    """Small jobs on a GPU too small for the big one never delay it, so they never count as bypasses."""
    gw = make_gateway(queue_gpus="big=10000,small=4000", queue_max_bypass=0, queue_poll_ttl_seconds=30)
    hog = _lease(http, gw.url, 6000, "hog")
    assert hog["gpu"] == "big"
    big = _lease(http, gw.url, 9000, "big")
    assert big["status"] == "queued"
    small = _lease(http, gw.url, 3000, "small", lane="jerry")
    assert small["status"] == "granted" and small["gpu"] == "small"
    also_small = _lease(http, gw.url, 3000, "small2")
    assert also_small["status"] == "queued"  # it would fit on "big" beside the hog, but max_bypass is 0 there


def test_per_key_concurrency(make_gateway, http: httpx.Client) -> None:
    gw = make_gateway(api_keys="k1,k2", queue_key_max_active=1, queue_gpus="gpu0=80000", queue_poll_ttl_seconds=30)

    def lease(key: str) -> dict:
        return http.post(f"{gw.url}/leases", json={"model": "m", "lane": "generation", "owner": key, "vram_mb": 1000},
                         headers={"X-API-Key": key}).json()

    a1, a2, b1 = lease("k1"), lease("k1"), lease("k2")
    assert (a1["status"], a2["status"], b1["status"]) == ("granted", "queued", "granted")
    http.post(f"{gw.url}/leases/{a1['lease_id']}/release", json={}, headers={"X-API-Key": "k1"})
    wait_until(lambda: http.get(f"{gw.url}/leases/{a2['lease_id']}", headers={"X-API-Key": "k1"}).json()["status"]
               == "granted", 5)
