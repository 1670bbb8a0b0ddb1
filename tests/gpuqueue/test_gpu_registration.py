"""GPU services register their cards with the gateway (issue 14, item 9): a gateway with nothing configured budgets
its placeholder only until the first registration, `/queue` says which budget it uses, a restarted gateway on a
wiped Redis learns the cards again, and a gateway told its cards by the operator is never second-guessed."""

from __future__ import annotations

import asyncio
import shutil
import time

import httpx
import pytest
import redis as redis_sync

from garycommon.gpureg import register_cards_forever
from garycommon.settings import Settings

CARDS = [("cuda:0", 16000), ("cuda:1", 16000)]


@pytest.fixture(autouse=True)
def _no_cards_left_behind() -> None:
    """Registering makes this (test) process's own clients name the cards: never let that leak into other tests."""
    from garycommon import gpureg

    gpureg._OWN.clear()
    yield
    gpureg._OWN.clear()


async def _until(check, within: float = 15.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.1)


def _queue(url: str) -> dict:
    return httpx.get(f"{url}/queue", timeout=10).json()  # noqa: ASYNC212 - a local call well under a millisecond


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="the gateway detects this machine's own cards")
async def test_cards_replace_the_placeholder_and_come_back_after_a_restart(make_gateway, redis_url: str) -> None:  # noqa: ANN001
    gw = make_gateway(queue_gpus="", gpu_vram_mb=None)
    before = _queue(gw.url)
    assert before["gpu_source"] == "placeholder" and [g["id"] for g in before["gpus"]] == ["default"]
    settings = Settings(queue_url=gw.url, redis_url=redis_url)
    task = asyncio.create_task(register_cards_forever(settings, "jerry", cards=lambda: CARDS, every=0.3))
    try:
        await _until(lambda: {g["id"]: g["capacity_mb"] for g in _queue(gw.url)["gpus"]}.get("cuda:1") == 16000)
        after = _queue(gw.url)
        assert after["gpu_source"] == "registered"
        assert {g["id"]: g["capacity_mb"] for g in after["gpus"]}.get("default", 0) == 0  # placeholder drained
        # the gateway restarts on a wiped Redis: placeholder again, then the cards again
        gw.stop()
        redis_sync.Redis.from_url(redis_url).flushdb()
        gw2 = make_gateway(queue_gpus="", gpu_vram_mb=None)
        settings2 = Settings(queue_url=gw2.url, redis_url=redis_url)
        task.cancel()
        task = asyncio.create_task(register_cards_forever(settings2, "jerry", cards=lambda: CARDS, every=0.3))
        await _until(lambda: _queue(gw2.url)["gpu_source"] == "registered")
        assert {g["id"] for g in _queue(gw2.url)["gpus"] if g["capacity_mb"] > 0} == {"cuda:0", "cuda:1"}
    finally:
        task.cancel()


async def test_configured_cards_are_never_second_guessed(make_gateway, redis_url: str) -> None:  # noqa: ANN001
    gw = make_gateway(queue_gpus="hostA/0=24000")
    task = asyncio.create_task(register_cards_forever(Settings(queue_url=gw.url, redis_url=redis_url), "gary",
                                                      cards=lambda: CARDS, every=0.2))
    try:
        await asyncio.sleep(1.0)
    finally:
        task.cancel()
    snap = _queue(gw.url)
    assert snap["gpu_source"] == "configured"
    assert [(g["id"], g["capacity_mb"]) for g in snap["gpus"]] == [("hostA/0", 24000)]  # no card counted twice


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="the gateway detects this machine's own cards")
async def test_two_hosts_each_spend_only_their_own_cards(make_gateway, redis_url: str) -> None:  # noqa: ANN001
    """A worker host joins: each host's cards carry its GPU_HOST, and each host's leases are granted on its own cards
    only (a lease budgeted on one host's card and run on the other's would overcommit that card)."""
    from garycommon import gpureg
    from garycommon.queueclient import QueueClient

    gw = make_gateway(queue_gpus="", gpu_vram_mb=None)
    admin = QueueClient(gw.url)
    try:
        assert await gpureg.register_once(admin, [("main/cuda:0", 1000)], "gary")
        assert gpureg.own_gpus() == ["main/cuda:0"]  # what this process's clients now name in every request
        assert await gpureg.register_once(admin, [("worker1/cuda:0", 1000)], "gary")
    finally:
        gpureg._OWN.clear()
        await admin.aclose()
    hosts = {h: QueueClient(gw.url, gpus=lambda h=h: [f"{h}/cuda:0"]) for h in ("main", "worker1")}
    try:
        async with hosts["main"].lease("m", lane="jerry", owner="main", vram_mb=800) as a, \
                hosts["worker1"].lease("m", lane="jerry", owner="worker1", vram_mb=200) as b:
            assert (a.gpu, b.gpu) == ("main/cuda:0", "worker1/cuda:0")
            # main's card has 200 MB left: a 300 MB lease of main's waits for it, never spilling onto worker1's 800
            with pytest.raises(Exception, match="no GPU lease"):
                async with hosts["main"].lease("m", lane="jerry", owner="main2", vram_mb=300, wait_timeout=1.0):
                    pass
    finally:
        for client in hosts.values():
            await client.aclose()
