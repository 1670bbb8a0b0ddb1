"""Redis trouble as a client sees it, over a real server and a real Redis: a busy pool waits, a pool that stays busy
is a 429 QUEUE_FULL with Retry-After, a dead Redis a 503 "retrying" — never a 500 (issue 14)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI

from garycommon.httpapp import install_error_handlers
from garycommon.redisconn import connect
from garycommon.settings import Settings
from tests.servers import ThreadedServer, free_port


def _app(settings: Settings) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    redis = connect(settings, decode_responses=True)

    @app.post("/hold")
    async def hold() -> dict[str, object]:
        return {"popped": await redis.blpop(["nothing-comes"], timeout=1)}

    @app.get("/ping")
    async def ping() -> dict[str, object]:
        return {"pong": await redis.ping()}

    return app


@pytest.fixture
def serve() -> Iterator:
    started: list[ThreadedServer] = []

    def start(**overrides: object) -> str:
        server = ThreadedServer(_app(Settings(**overrides))).start()
        started.append(server)
        return server.url

    yield start
    for server in started:
        server.stop()


async def test_a_busy_pool_waits_for_a_connection(serve, redis_url: str) -> None:  # noqa: ANN001
    url = serve(redis_url=redis_url, redis_max_connections=2, redis_pool_timeout_seconds=5)
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        answers = await asyncio.gather(*(http.get("/ping") for _ in range(50)), http.post("/hold"))
    assert [r.status_code for r in answers] == [200] * 51


async def test_a_pool_that_stays_busy_is_queue_full_with_retry_after(serve, redis_url: str) -> None:  # noqa: ANN001
    url = serve(redis_url=redis_url, redis_max_connections=2, redis_pool_timeout_seconds=0.2)
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        holds = [asyncio.create_task(http.post("/hold")) for _ in range(2)]
        await asyncio.sleep(0.3)
        r = await http.get("/ping")
        await asyncio.gather(*holds)
    assert r.status_code == 429 and r.json()["code"] == "QUEUE_FULL", r.text
    assert "retry" in r.json()["error"] and int(r.headers["retry-after"]) > 0


def test_a_dead_redis_is_503_retrying(serve) -> None:  # noqa: ANN001
    url = serve(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    r = httpx.get(f"{url}/ping", timeout=30)
    assert r.status_code == 503 and r.json()["code"] == "SERVICE_UNAVAILABLE", r.text
    assert "retrying" in r.json()["error"] and "Error 111" not in r.json()["error"]
    assert int(r.headers["retry-after"]) > 0
