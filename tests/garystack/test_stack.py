"""`gary-stack up --demo` end to end: the one-command local run starts everything, serves real requests through
the queue gateway, and Ctrl-C stops every process it started."""

from __future__ import annotations

import base64
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from tests.servers import free_port, listening

pytestmark = pytest.mark.slow


def _wav_b64(seconds: float = 3.0, sr: int = 44100) -> str:
    t = np.arange(int(sr * seconds)) / sr
    data = np.stack([0.3 * np.sin(2 * np.pi * 220 * t), 0.3 * np.sin(2 * np.pi * 330 * t)], axis=1)
    buf = io.BytesIO()
    sf.write(buf, data.astype(np.float32), sr, format="WAV", subtype="PCM_16")
    return base64.b64encode(buf.getvalue()).decode()


def test_stack_up_demo_serves_and_stops_cleanly(tmp_path: Path) -> None:
    ports = {name: free_port() for name in ("gary", "jerry", "terry", "queue", "redis")}
    env = {k: v for k, v in os.environ.items() if k not in {"REDIS_URL", "QUEUE_URL", "LOCAL_MODELS_DIR"}}
    env.update(GARY_OUTPUT_SECONDS="4", PYTHONUNBUFFERED="1")
    argv = [sys.executable, "-c", "import sys; from garystack.cli import main; sys.exit(main())", "up", "--demo",
            "--data-dir", str(tmp_path / "data"), *[a for n, p in ports.items() for a in (f"--{n}-port", str(p))]]
    log = (tmp_path / "stack.log").open("w+")
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 420
        while time.monotonic() < deadline:
            log.seek(0)
            text = log.read()
            if "stack is up" in text:
                break
            assert proc.poll() is None, f"gary-stack exited early:\n{text[-4000:]}"
            time.sleep(1)
        else:
            pytest.fail("stack did not come up in time:\n" + text[-4000:])
        assert "DEMO MODE" in text
        with httpx.Client(timeout=60) as http:
            for name in ("gary", "jerry", "terry", "queue"):  # "stack is up" = listening; models may still load
                deadline = time.monotonic() + 180
                while (r := http.get(f"http://127.0.0.1:{ports[name]}/health")).status_code != 200:
                    assert r.json().get("status") == "loading" and time.monotonic() < deadline, (name, r.text)
                    time.sleep(0.5)
            # jerry as curl uses it
            r = http.post(f"http://127.0.0.1:{ports['jerry']}/generate",
                          json={"prompt": "lofi drums 90bpm", "steps": 4, "return_format": "base64", "seed": 7})
            assert r.status_code == 200, r.text
            assert r.json()["success"] is True and r.json()["audio_base64"]
            # gary4juce through the queue gateway
            r = http.post(f"http://127.0.0.1:{ports['gary']}/api/juce/process_audio",
                          json={"audio_data": _wav_b64(), "model_name": "thepatch/vanya_ai_dnb_0.1", "prompt_duration": 1})
            assert r.status_code == 200, r.text
            sid = r.json()["session_id"]
            end = time.monotonic() + 180
            while time.monotonic() < end:
                poll = http.get(f"http://127.0.0.1:{ports['gary']}/api/juce/poll_status/{sid}").json()
                if poll["status"] == "completed" and poll["audio_data"]:
                    break
                assert poll["status"] != "failed", poll
                time.sleep(0.5)
            else:
                pytest.fail(f"generation did not complete: {poll}")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            rc = proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
        log.close()
    assert rc == 0
    time.sleep(0.5)
    still = [n for n, p in ports.items() if listening(p)]
    assert not still, f"still listening after Ctrl-C: {still}"
