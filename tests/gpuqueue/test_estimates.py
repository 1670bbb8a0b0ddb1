"""Estimated waits come from moving averages of measured run times: where run times dominate they are close to
the real waits, and they grow with the position."""

from __future__ import annotations

import asyncio

import httpx

RUN_S = 0.4


async def _hold(http: httpx.AsyncClient, url: str, lease: dict) -> None:
    await asyncio.sleep(RUN_S)
    r = await http.post(f"{url}/leases/{lease['lease_id']}/release", json={"fencing_token": lease["fencing_token"]})
    assert r.status_code == 200, r.text


async def _acquire(http: httpx.AsyncClient, url: str, name: str) -> dict:
    r = await http.post(f"{url}/leases", json={"model": "facebook/melodyflow-t24-30secs", "lane": "transform",
                                               "owner": name, "session_id": name, "vram_mb": 1000})
    assert r.status_code == 200, r.text
    return r.json()


async def _until_granted(http: httpx.AsyncClient, url: str, lease: dict) -> dict:
    while lease["status"] != "granted":
        lease = (await http.get(f"{url}/leases/{lease['lease_id']}", params={"wait": 10})).json()
    return lease


async def test_estimates_track_real_waits(make_gateway) -> None:
    url = make_gateway(queue_gpus="gpu0=80000", queue_default_duration_seconds=5.0, queue_poll_ttl_seconds=30,
                       queue_lease_ttl_seconds=30).url
    loop = asyncio.get_running_loop()
    async with httpx.AsyncClient(timeout=30) as http:
        # before anything ran, the configured default is all it knows
        first = await _acquire(http, url, "warm0")
        second = await _acquire(http, url, "warm1")
        assert second["position"] == 1 and 4.0 < second["estimated_wait_seconds"] <= 5.0
        for lease in (first, second, await _acquire(http, url, "warm2")):
            await _hold(http, url, await _until_granted(http, url, lease))

        # now: one running, five waiting in the transform lane (one at a time)
        running = await _until_granted(http, url, await _acquire(http, url, "run"))
        start = loop.time()
        waiting = [await _acquire(http, url, f"q{i}") for i in range(5)]
        estimates = [w["estimated_wait_seconds"] for w in waiting]
        assert [w["position"] for w in waiting] == [1, 2, 3, 4, 5]
        assert estimates == sorted(estimates)
        actual = {}

        async def serve(lease: dict) -> None:
            granted = await _until_granted(http, url, lease)
            actual[lease["session_id"]] = loop.time() - start
            await _hold(http, url, granted)

        await asyncio.gather(_hold(http, url, running), *(serve(w) for w in waiting))
    for w, est in zip(waiting, estimates, strict=True):
        real = actual[w["session_id"]]
        assert 0.5 * real - 0.2 < est < 2 * real + 0.2, (w["session_id"], est, real)
