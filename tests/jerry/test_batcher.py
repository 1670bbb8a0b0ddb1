"""The GPU worker with the real (demo) engine: one engine call for what queues up, and a bad request in a batch
fails alone."""

from __future__ import annotations

import asyncio
import time

import pytest

from garycommon.errors import GaryError
from jerry.batcher import Batcher
from jerry.sao import SAORequest
from tests.jerry.jerry_helpers import JerryServer


async def test_bad_request_in_a_batch_fails_alone(jerry: JerryServer) -> None:
    engine = jerry.state.registry.standard().engine
    batcher = Batcher(max_batch=8)
    batcher.start()
    try:
        # Occupy the worker so the next three queue up and are gathered into one engine call.
        blocker = asyncio.ensure_future(batcher.call(lambda: time.sleep(0.3)))
        await asyncio.sleep(0.05)
        good = [asyncio.ensure_future(batcher.submit(engine, SAORequest("x", steps=1, seed=s, seconds_total=1)))
                for s in (1, 2)]
        bad = asyncio.ensure_future(batcher.submit(engine, SAORequest("x", steps=1, seed=3, sampler_type="bogus")))
        await blocker
        results = await asyncio.gather(*good)
        with pytest.raises(GaryError, match="sampler_type"):
            await bad
        assert [r.seed for r in results] == [1, 2]
        assert batcher.largest_batch == 3, "the three were gathered into one call before falling back"
        again = await batcher.submit(engine, SAORequest("x", steps=1, seed=1, seconds_total=1))
        assert (again.audio - results[0].audio).abs().max() < 1e-4, "same seed, same audio alone or batched"
    finally:
        await asyncio.to_thread(batcher.stop)
