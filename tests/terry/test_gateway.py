"""terry with the real queue gateway: a resident lease for the loaded weights, a working-memory lease per transform,
and no second lease when gary passes the task's own."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import redis

from garycommon.queueclient import QueueClient
from garycommon.settings import Settings
from tests.terry.terry_helpers import Terry, serve, until, wav_b64


@pytest.fixture(scope="module")
def gateway(redis_server: Any) -> Iterator[str]:
    from gpuqueue.app import create_app

    url = redis_server.url.rsplit("/", 1)[0] + "/3"  # its own database: terry's other tests never touch it
    redis.Redis.from_url(url).flushdb()
    settings = Settings(redis_url=url, gary_url="", queue_gpus="gpu0=24000", queue_lease_ttl_seconds=2.0,
                        queue_reaper_interval_seconds=0.05, queue_position_interval_seconds=0.1, log_level="WARNING")
    server = serve(create_app(settings))
    yield server.url
    server.stop()


@pytest.fixture(scope="module")
def leased_terry(make_terry: Callable[..., Terry], gateway: str) -> Terry:
    return make_terry(queue_url=gateway)


async def leases(gateway: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(timeout=10) as http:
        return (await http.get(f"{gateway}/queue")).json()["leases"]


async def post(t: Terry, **body: Any) -> httpx.Response:
    async with httpx.AsyncClient(timeout=60) as http:
        return await http.post(f"{t.url}/transform", json=body)


async def test_runs_under_garys_task_lease_while_it_holds_the_transform_lane(leased_terry: Terry, gateway: str) -> None:
    queue = QueueClient(gateway)
    try:
        async with queue.lease("facebook/melodyflow-t24-30secs", lane="transform", owner="gary", vram_mb=4000) as task:
            # The transform lane's single slot is taken by "gary"'s task: a second transform-lane lease would wait
            # forever; terry must load under its resident lease (own lane) and run under gary's.
            resp = await post(leased_terry, session_id="under-gary", variation="celtic", audio=wav_b64(1.5),
                              lease_id=task.id, fencing_token=task.fencing_token, steps=2)
            assert resp.status_code == 200, resp.text
            assert resp.json()["metadata"]["lease"] == "task"
            held = await leases(gateway)
            assert [(x["lane"], x["owner"]) for x in held if x.get("resident")] == [("terry", "terry:resident")]
            assert [x["owner"] for x in held if x["lane"] == "transform"] == ["gary"]
    finally:
        await queue.aclose()


async def test_direct_call_waits_for_the_lane_then_leases_working_memory(leased_terry: Terry, gateway: str) -> None:
    queue = QueueClient(gateway)
    rdb = redis.Redis.from_url(leased_terry.settings.redis_url)
    try:
        async with queue.lease("facebook/melodyflow-t24-30secs", lane="transform", owner="gary", vram_mb=4000):
            call = asyncio.create_task(post(leased_terry, session_id="direct", variation="celtic", audio=wav_b64(1.5),
                                            steps=2))
            await until(lambda: rdb.get("queue_status:direct") is not None, 10, "terry's 'waiting for GPU' status")
            waiting = json.loads(rdb.get("queue_status:direct"))
            assert waiting["status"] == "queued" and {"position", "total_queued", "estimated_seconds"} <= set(waiting)
            assert not call.done()
        resp = await call
        assert resp.status_code == 200 and resp.json()["metadata"]["lease"] == "gateway"
        held = await leases(gateway)
        assert not [x for x in held if x["lane"] == "transform"], "the working-memory lease is released"
        assert [x["vram_mb"] for x in held if x.get("resident")] == [leased_terry.settings.terry_resident_vram_mb]
        # unloading gives the resident lease back
        assert leased_terry.server.call(leased_terry.svc.host.unload(reason="test")) is True
        assert not [x for x in await leases(gateway) if x.get("resident")]
    finally:
        rdb.close()
        await queue.aclose()


async def test_a_revoked_resident_lease_makes_terry_reload_under_a_new_one(leased_terry: Terry, gateway: str) -> None:
    """If the gateway stops honouring the weights' lease (operator release, gateway reset), terry must not keep
    unaccounted weights on the GPU: it unloads before the next transform and loads again under a fresh lease."""
    host = leased_terry.svc.host
    first = await post(leased_terry, session_id="before-revoke", variation="celtic", audio=wav_b64(1.5), steps=2)
    assert first.status_code == 200
    loads = host.loads
    (resident,) = [x for x in await leases(gateway) if x.get("resident")]
    async with httpx.AsyncClient(timeout=10) as http:
        revoked = await http.post(f"{gateway}/leases/{resident['lane']}:{resident['session_id']}/release",
                                  json={"outcome": "cancelled"})
        assert revoked.status_code == 200, revoked.text
    await until(lambda: host.needs_load, 10, "the heartbeat to notice the revoked lease")
    again = await post(leased_terry, session_id="after-revoke", variation="celtic", audio=wav_b64(1.5), steps=2)
    assert again.status_code == 200 and again.json()["metadata"]["model_loaded_for_request"] is True
    assert host.loads == loads + 1
    (renewed,) = [x for x in await leases(gateway) if x.get("resident")]
    assert renewed["session_id"] != resident["session_id"]
