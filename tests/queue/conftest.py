"""Fixtures for the gateway tests (helpers live in gq_helpers.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import redis as redis_sync
from garycommon.settings import Settings
from gpuqueue.app import create_app
from gq_helpers import FAST, CallbackSink, ServerThread


@pytest.fixture
def sink() -> Iterator[CallbackSink]:
    s = CallbackSink()
    s.start()
    yield s
    s.stop()


@pytest.fixture
def make_gateway(redis_url: str) -> Iterator[Callable[..., ServerThread]]:
    """Start a gateway replica against the test's Redis: make_gateway(**settings overrides) -> ServerThread."""
    started: list[ServerThread] = []

    def make(**overrides: Any) -> ServerThread:
        values = {**FAST, "redis_url": redis_url, "gary_url": "", **overrides}
        server = ServerThread(create_app(Settings(**values)))
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


