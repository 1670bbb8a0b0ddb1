"""A musician's session survives `kill -9` of every process of `gary-stack up` (gary, the gateway, redis-server,
jerry, terry): each comes back by itself, clients are told "retrying" (503), never an internal error, while a piece
is down, the session and its audio are unchanged, a job interrupted by a crash ends (completed or clearly failed),
and nothing is left running after Ctrl-C. Its own stack: it kills things the other flows rely on."""

from __future__ import annotations

import base64
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.flows.stack_harness import MODEL, Stack, running_stack, wav_b64
from tests.servers import listening

pytestmark = pytest.mark.slow
BACK_WITHIN = 180.0  # a restarted torch service imports for a while on 2 busy cores


@pytest.fixture(scope="module")
def crash_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("crash")) as running:
        yield running
    ports = [p for name, p in running.ports.items() if name != "gary2"]
    time.sleep(1.0)
    assert not [p for p in ports if listening(p)], "a process outlived gary-stack's Ctrl-C"


def pid_of(port: int, what: str) -> int:
    """The process listening on `port` as started by gary-stack (its argv names the port; redis-server rewrites its
    title to `redis-server 127.0.0.1:<port>`)."""
    needle = (f"--port\x00{port}\x00" if what != "redis" else f":{port}").encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline + b"\x00" and (what != "redis" or b"redis-server" in cmdline):
            return int(entry.name)
    raise AssertionError(f"no process for {what} on port {port}")


def kill9(stack: Stack, service: str) -> int:
    pid = pid_of(stack.ports[service], service)
    os.kill(pid, signal.SIGKILL)
    return pid


def back(stack: Stack, service: str, old_pid: int) -> None:
    """Restarted (a new pid) and answering /health 200 again (redis: PING)."""
    deadline = time.monotonic() + BACK_WITHIN
    while time.monotonic() < deadline:
        try:
            if pid_of(stack.ports[service], service) != old_pid:
                if service == "redis":
                    import redis

                    if redis.Redis.from_url(stack.redis_url).ping():
                        return
                elif httpx.get(f"{stack.url(service)}/health", timeout=3).status_code == 200:
                    return
        except (AssertionError, httpx.HTTPError, OSError, Exception):
            pass
        time.sleep(0.5)
    raise AssertionError(f"{service} did not come back within {BACK_WITHIN:.0f} s:\n{stack.log_tail()}")


def job(http: httpx.Client, route: str, body: dict[str, Any], within: float = 120.0) -> dict[str, Any]:
    """A gary4juce request, then polling until it ends; returns the last poll."""
    r = http.post(f"/api/juce/{route}", json=body)
    assert r.status_code == 200, r.text
    sid = r.json()["session_id"]
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        poll = http.get(f"/api/juce/poll_status/{sid}").json()
        if poll["status"] in ("completed", "failed") and (poll["audio_data"] or poll["status"] == "failed"):
            return poll
        time.sleep(0.3)
    raise AssertionError(f"{route} on {sid} did not end within {within:.0f} s")


def test_every_process_killed_comes_back_and_the_session_survives(crash_stack: Stack) -> None:
    stack = crash_stack
    with httpx.Client(base_url=stack.url("gary"), timeout=30) as http:
        first = job(http, "process_audio", {"audio_data": wav_b64(4.0), "model_name": MODEL, "prompt_duration": 2})
        assert first["status"] == "completed"
        sid, audio = first["session_id"], base64.b64decode(first["audio_data"])
        cont = {"session_id": sid, "model_name": MODEL, "prompt_duration": 2, "audio_data": first["audio_data"]}

        # the gateway dies: new work is a short 503 "retrying" until it is back, then everything works again
        old = kill9(stack, "queue")
        r = http.post("/api/juce/continue_music", json=cont)
        assert r.status_code == 503 and "INTERNAL" not in r.text, r.text
        back(stack, "queue", old)
        assert job(http, "continue_music", cont)["status"] == "completed"

        # redis-server dies: the same, and it comes back from its AOF with the session's job history
        old = kill9(stack, "redis")
        r = http.get(f"/api/juce/poll_status/{sid}")
        assert r.status_code in (200, 503) and "INTERNAL" not in r.text, r.text
        back(stack, "redis", old)
        deadline = time.monotonic() + 60
        while (r := http.get(f"/api/juce/poll_status/{sid}")).status_code != 200:
            assert time.monotonic() < deadline, r.text
            time.sleep(0.5)
        assert r.json()["status"] == "completed"
        assert job(http, "retry_music", {"session_id": sid, "model_name": MODEL, "prompt_duration": 2}, 180)[
            "status"] == "completed"

        # jerry and terry die and come back
        for service in ("jerry", "terry"):
            back(stack, service, kill9(stack, service))
        transformed = job(http, "transform_audio", {"session_id": sid, "variation": "lofi_chill", "flowstep": 0.13})
        assert transformed["status"] == "completed"

        # gary dies in the middle of a job: it comes back, the job ends (run again or clearly failed), the session
        # and its audio are intact, and the session takes new jobs
        r = http.post("/api/juce/continue_music", json=cont)
        assert r.status_code == 200, r.text
        deadline = time.monotonic() + 60
        while http.get(f"/api/juce/poll_status/{sid}").json()["status"] not in ("warming", "processing"):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        old = kill9(stack, "gary")
        back(stack, "gary", old)
        deadline = time.monotonic() + 240  # the gateway notices the dead lease after its 60 s TTL
        while (poll := http.get(f"/api/juce/poll_status/{sid}").json())["status"] not in ("completed", "failed"):
            assert time.monotonic() < deadline, poll
            time.sleep(0.5)
        if poll["status"] == "failed":
            assert poll["error"] and "INTERNAL" not in poll["error"]
        session_audio = http.post("/api/juce/undo_transform", json={"session_id": sid})
        assert session_audio.status_code in (200, 400), session_audio.text
        assert job(http, "continue_music", cont, 180)["status"] == "completed"
    assert "restarting it" in stack.log_tail(200_000) and len(audio) > 0
