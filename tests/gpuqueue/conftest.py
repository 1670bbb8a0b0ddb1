"""Fixtures for the gateway tests (helpers live in gq_helpers.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import redis as redis_sync

from garycommon.settings import Settings
from gpuqueue.app import create_app
from tests.gpuqueue.gq_helpers import FAST, CallbackSink, serve, wait_until
from tests.servers import ThreadedServer, free_port


@pytest.fixture
def sink() -> Iterator[CallbackSink]:
    s = CallbackSink()
    s.start()
    yield s
    s.stop()


@pytest.fixture
def make_gateway(redis_url: str) -> Iterator[Callable[..., ThreadedServer]]:
    """Start a gateway replica against the test's Redis: make_gateway(**settings overrides) -> ThreadedServer."""
    started: list[ThreadedServer] = []

    def make(**overrides: Any) -> ThreadedServer:
        values = {**FAST, "redis_url": redis_url, "gary_url": "", **overrides}
        server = serve(create_app(Settings(**values)))
        started.append(server)
        return server

    yield make
    for server in reversed(started):
        server.stop()


@pytest.fixture
def rdb(redis_url: str) -> Iterator[redis_sync.Redis]:
    client = redis_sync.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as client:
        yield client




@pytest.fixture
def spawn_gateway(redis_url: str) -> Iterator[Callable[..., str]]:
    """Start a gateway replica as its own process (`python -m gpuqueue.cli`, settings through the environment, as
    deployed): spawn_gateway(**settings overrides) -> base URL."""
    procs: list[subprocess.Popen] = []

    def spawn(**overrides: Any) -> str:
        values = {**FAST, "redis_url": redis_url, "gary_url": "", "log_level": "WARNING", **overrides}
        env = {**os.environ, **{k.upper(): str(v) for k, v in values.items()}}
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "gpuqueue.cli", "--host", "127.0.0.1", "--port", str(port)],
                                env=env)
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            assert proc.poll() is None, f"gateway exited with {proc.returncode}"
            try:
                return httpx.get(f"{url}/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(healthy, 30, "gateway process health")
        return url

    yield spawn
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
