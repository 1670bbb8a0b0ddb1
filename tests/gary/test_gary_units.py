"""gary's pure pieces: the string-payload parser, request validation, queue_status wording, the audio math of
bang and continue (first/last prompt seconds, output lengths, channels) and the Redis-sorted-set progress throttle."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import torch

from gary import catalog, pipeline
from gary.notifications import error_payload, queue_status_payload
from gary.payloads import MAX_AUDIO_TEXT, ContinueRequest, ProcessAudioRequest, TransformRequest, parse_payload, validate
from gary.throttle import ProgressThrottle
from garycommon import rediskeys
from garycommon.audio import Audio
from garycommon.errors import GaryError
from garycommon.settings import Settings


def test_string_payloads_parse_without_losing_escaped_quotes() -> None:
    body = {"session_id": "abc", "description": 'say "hi" \\ now', "top_k": 100}
    plain = json.dumps(body)
    assert parse_payload(plain) == body
    swift = plain.replace("\\", "\\\\").replace('"', '\\"')  # one more level of escaping, as Swift clients send
    assert parse_payload(swift) == body
    assert parse_payload(json.dumps(plain)) == body  # JSON of a JSON string
    assert parse_payload({"model_name": " thepatch/x\\ ", "session_id": "\\abc "}) == {
        "model_name": "thepatch/x", "session_id": "abc"}
    for bad in ('{"a": ', "[1,2]", "42", "", 17, None, ["a"]):
        with pytest.raises(GaryError) as err:
            parse_payload(bad)
        assert err.value.message.startswith("Invalid JSON format")


def test_validation_messages_and_limits() -> None:
    with pytest.raises(GaryError) as err:
        validate(ProcessAudioRequest, {"audio_data": "x", "prompt_duration": 0})
    assert err.value.code == "VALIDATION_ERROR"
    assert "Missing required field: model_name" in err.value.message and "prompt_duration" in err.value.message
    with pytest.raises(GaryError) as err:
        validate(ProcessAudioRequest, {"audio_data": "A" * (MAX_AUDIO_TEXT + 1), "model_name": "a/b",
                                       "prompt_duration": 6})
    assert err.value.code == "DATA_TOO_LARGE" and err.value.http_status == 413
    req = validate(ContinueRequest, {"session_id": "", "audio_data": "", "seed": -1, "extra": "ignored"})
    assert req.session_id is None and req.audio_data is None and req.seed == -1
    assert validate(TransformRequest, {"variation": "celtic", "solver": " MIDPOINT "}).solver == "midpoint"
    for given in ("6", 6, 6.0, 6.9):  # fractional seconds truncate, as the original's pydantic 1 model did
        assert validate(ProcessAudioRequest, {"audio_data": "x", "model_name": "a/b", "prompt_duration": given}
                        ).prompt_duration == 6
    for bad in (0.5, float("nan"), float("inf"), True, "6.5", 30):
        with pytest.raises(GaryError):
            validate(ProcessAudioRequest, {"audio_data": "x", "model_name": "a/b", "prompt_duration": bad})


def test_model_allow_list() -> None:
    settings = Settings(model_allow_owners=["thepatch"])
    assert catalog.check_model("thepatch/anything-new", settings)
    assert catalog.check_model("thepatch/hoenn_lofi", Settings(model_allow_owners=[]))  # the catalogue always is
    for bad in ("facebook/musicgen-small", "../x/y", "x", "a/b/c"):
        with pytest.raises(GaryError) as err:
            catalog.check_model(bad, settings)
        assert err.value.code == "MODEL_NOT_ALLOWED"
    assert catalog.default_description("thepatch/gary_orchestra_2") == "violin, epic, film, piano, strings, orchestra"
    assert catalog.default_description("thepatch/hoenn_lofi") is None


def test_queue_status_payload_always_has_the_fields_gary4live_reads() -> None:
    bare = queue_status_payload("s", "mystery", None)
    assert bare == {"message": "Request received, determining queue status...", "position": 0, "total_queued": 0,
                    "estimated_time": "about 30 seconds", "estimated_seconds": 30.0, "status": "mystery",
                    "session_id": "s", "notification_id": None, "priority": True}
    queued = queue_status_payload("s", "queued", {"queued_tasks": 2, "active_tasks": 1, "estimated_wait_seconds": 75})
    assert queued["position"] == 2 and queued["total_queued"] == 3
    assert queued["estimated_time"] == "about 1 minute and 15 seconds"
    assert queued["message"] == ("Task queued successfully. You are number 2 in the queue. "
                                 "Estimated wait time: about 1 minute and 15 seconds.")
    assert queue_status_payload("s", "warming", {})["message"].startswith("Downloading model from Hugging Face")
    assert queue_status_payload("s", "queued", {"queued_tasks": 5, "position": 4})["position"] == 4
    assert error_payload("boom", None) == {"message": "boom"}


def _audio(seconds: float, sr: int = 1000, channels: int = 2) -> Audio:
    t = torch.arange(int(seconds * sr), dtype=torch.float32)
    rows = [t / 1e4, -t / 1e4][:channels]
    return Audio(torch.stack(rows), sr)


def test_bang_prompts_with_the_first_seconds_and_continue_with_the_last() -> None:
    audio = _audio(5.0)
    first = pipeline.take_prompt(audio, 2, from_end=False)
    last = pipeline.take_prompt(audio, 2, from_end=True)
    assert first.shape == last.shape == (2, 2000)
    assert torch.equal(first, audio.waveform[:, :2000]) and torch.equal(last, audio.waveform[:, -2000:])
    # stereo stays two channels (the engine averages them for mono models; never L-then-R concatenation)
    assert torch.equal(first[1], -first[0])
    short = _audio(0.5)
    assert pipeline.take_prompt(short, 6, from_end=True).shape == (2, 500)  # shorter than the prompt: all of it
    assert pipeline.take_prompt(_audio(1.0, channels=1), 1, from_end=False).shape == (1, 1000)


def test_output_lengths_rates_and_channels() -> None:
    audio = _audio(5.0, sr=1000)
    generated = torch.full((1, 64000), 2.0)  # 2 s of mono at 32 kHz, too loud
    fitted = pipeline.fit_output(generated, 32000, audio)
    assert fitted.shape == (2, 2000) and fitted.abs().max() <= 1.0 + 1e-6  # input's rate and channels, no clipping
    joined = pipeline.continuation(audio, fitted, 2)
    assert joined.shape == (2, 3000 + 2000)  # input minus the prompt tail ++ generation
    assert torch.equal(joined[:, :3000], audio.waveform[:, :3000])  # the client's audio stays bit-exact
    mono = _audio(1.0, channels=1)
    assert pipeline.fit_output(torch.zeros(2, 32000), 32000, mono).shape == (1, 1000)


async def test_progress_throttle_uses_a_sorted_set(redis_server: Any) -> None:
    # its own database: the session's gary servers share db 0, and a generation still running there would count
    redis = aioredis.Redis.from_url(redis_server.url.rsplit("/", 1)[0] + "/9", decode_responses=True)
    await redis.flushdb()
    try:
        throttle = ProgressThrottle(redis, interval=0.2, busy_interval=0.6)
        await throttle.mark_active("a")
        assert await throttle.allow("a") is True
        assert await throttle.allow("a") is False  # < interval
        await asyncio.sleep(0.25)
        assert await throttle.allow("a") is True  # one generation: every interval
        await throttle.mark_active("b")
        assert await throttle.active_count() == 2
        await asyncio.sleep(0.25)
        assert await throttle.allow("a") is False  # two generations: every busy_interval
        await asyncio.sleep(0.4)
        assert await throttle.allow("a") is True
        await redis.zadd(rediskeys.active_generations(), {"ghost": 1.0})  # a dead process's entry is not counted
        assert await throttle.active_count() == 2
        await throttle.mark_done("b")
        assert await throttle.active_count() == 1
        assert 0 < await redis.ttl(rediskeys.active_generations()) <= rediskeys.ACTIVE_GENERATIONS_TTL
    finally:
        await redis.aclose()


async def test_a_bad_request_does_not_sink_its_batch(gary_models: Path) -> None:
    """The real engine rejects one request of a batch: the batch is retried one by one, the good ones succeed."""
    from gary.batcher import GenerationBatcher
    from gary.musicgen import GenerationRequest, MusicGenEngine

    settings = Settings(local_models_dir=gary_models, demo_models=True, device="cpu")
    engine = MusicGenEngine(settings, torch.device("cpu"))
    batcher = GenerationBatcher(lambda: engine, max_batch=4)
    prompt = torch.zeros(1, 16000)

    def request(**kw: object) -> GenerationRequest:
        return GenerationRequest(model_name="thepatch/vanya_ai_dnb_0.1", prompt=prompt, prompt_sr=32000, duration=1.5,
                                 seed=1, **kw)

    try:
        blocker = batcher.worker.call(time.sleep, 0.5)  # the GPU thread is busy: the next three arrive together
        first = asyncio.ensure_future(batcher.generate(request()))
        await asyncio.sleep(0.05)
        good, bad, good2 = (asyncio.ensure_future(batcher.generate(r)) for r in (request(), request(top_p=2.0),
                                                                                 request(temperature=0.5)))
        await blocker
        (_, _, alone) = await first
        assert alone == 1
        for fut in (good, good2):
            result, _, size = await fut
            assert size == 1 and result.audio.shape[-1] == int(1.5 * result.sample_rate)
        with pytest.raises(GaryError) as err:
            await bad
        assert "top_p" in err.value.message
    finally:
        await asyncio.to_thread(batcher.worker.stop)


def test_company_counts_generations_on_their_way_and_forgets_stale_submissions() -> None:
    """What lets a burst share one engine call: just-queued and preparing generations count; a submission whose grant
    has not come within the horizon (waiting for VRAM, or dead) stops counting, so nobody waits for it."""
    from gary import batcher

    now = [100.0]
    company = batcher.Company(clock=lambda: now[0])
    assert company() == 0
    company.submitted("a")
    company.submitted("b")
    assert company() == 2
    company.preparing("a")  # granted: counted once, as preparing
    assert company() == 2
    company.prepared()
    assert company() == 1
    now[0] += batcher.ARRIVAL_HORIZON_S + 0.1
    assert company() == 0
