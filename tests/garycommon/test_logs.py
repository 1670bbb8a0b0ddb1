"""What the operator reads (issue 14, item 14): every line of a real server has time, service and level (uvicorn's
access lines included); idle traffic (heartbeats, health, polls) is access-logged only at DEBUG; a library's own
handler (the HF hub's retry warnings) no longer prints each line twice."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import httpx
import pytest

from tests.servers import free_port, wait_port

LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} gpu-queue (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: ")


def _gateway_log(redis_url: str, level: str) -> str:
    port = free_port()
    env = {**os.environ, "REDIS_URL": redis_url, "LOG_LEVEL": level, "QUEUE_GPUS": "gpu0=1000", "GARY_URL": "",
           "PYTHONUNBUFFERED": "1"}
    code = "import sys; from gpuqueue.cli import main; sys.exit(main())"
    proc = subprocess.Popen([sys.executable, "-c", code, "--host", "127.0.0.1", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_port(port, 60, proc)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            assert http.post("/tasks", json={"session_id": "log-s", "vram_mb": 10}).status_code == 200
            http.get("/queue")
            for _ in range(3):
                http.get("/health")
                http.post("/tasks/log-s/heartbeat", json={})
                http.get("/tasks/log-s")
        time.sleep(0.3)
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    return out


@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
def test_every_line_has_time_service_and_level(redis_url: str, level: str) -> None:
    out = _gateway_log(redis_url, level)
    lines = [line for line in out.splitlines() if line.strip()]
    bad = [line for line in lines if not LINE.match(line)]
    assert not bad, bad[:5]
    access = [line for line in lines if "uvicorn.access" in line]
    assert any('"POST /tasks HTTP/1.1" 200' in line and " INFO " in line for line in access), access
    assert any('"GET /queue HTTP/1.1" 200' in line for line in access), access
    idle = [line for line in access if "/heartbeat" in line or "/health" in line or "GET /tasks/log-s" in line]
    if level == "INFO":
        assert idle == [], idle
    else:
        assert len(idle) == 9 and all(" DEBUG " in line for line in idle), idle


def test_hub_warnings_are_printed_once_in_our_format() -> None:
    code = ("import logging; from garycommon.logs import setup_logging; setup_logging('jerry');"
            "logging.getLogger('huggingface_hub.utils._http').warning('retrying in 1s [Retry 1/5]')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    lines = [line for line in done.stderr.splitlines() if "Retry 1/5" in line]
    assert len(lines) == 1 and " jerry WARNING huggingface_hub" in lines[0], done.stderr
