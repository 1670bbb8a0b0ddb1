"""curl users: jerry inside the stack (text to audio, a BPM-aware loop of N bars), and terry and jerry each started
alone with their own CLI and no gateway (solo: no leases, one job at a time, said in the log and /health). A service
pointed at a gateway that does not answer keeps saying so with a clear 503 instead of running unaccounted."""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import soundfile as sf

from tests.flows.stack_harness import MODEL, STEP_SECONDS, Stack, Steps, stack_env, start_service, stop, wait_http, wav_bytes
from tests.servers import free_port

pytestmark = pytest.mark.slow


def curl(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("curl")
    if exe is None:
        pytest.fail("curl is needed for the curl flow (apt-get install curl)")
    return subprocess.run([exe, "-sS", "--max-time", str(int(STEP_SECONDS * 4)), *args], capture_output=True,
                          timeout=STEP_SECONDS * 5)


def test_curl_makes_audio_and_a_loop_with_jerry(stack: Stack, tmp_path: Path) -> None:
    steps = Steps()
    jerry = stack.url("jerry")
    out = tmp_path / "lofi.wav"
    with steps.step("generate"):
        proc = curl("-X", "POST", f"{jerry}/generate", "-H", "Content-Type: application/json",
                    "-d", '{"prompt": "lofi drums 90bpm", "steps": 4, "seed": 5}', "-o", str(out),
                    "-w", "%{http_code}")
    assert proc.stdout == b"200", proc.stderr
    info = sf.info(str(out))
    assert info.samplerate == 44100 and info.channels == 2 and info.frames > 44100

    with steps.step("generate a 4-bar loop"):
        proc = curl("-X", "POST", f"{jerry}/generate/loop", "-H", "Content-Type: application/json",
                    "-d", '{"prompt": "techno drums 120bpm", "bars": 4, "loop_type": "drums", "steps": 4, '
                          '"return_format": "base64", "seed": 6}')
    body = json.loads(proc.stdout)
    assert body["success"] is True, body
    data, rate = sf.read(io.BytesIO(base64.b64decode(body["audio_base64"])))
    assert len(data) / rate == pytest.approx(4 * 4 * 60 / 120, abs=0.05)  # 4 bars of 4/4 at 120 bpm = 8 s


@pytest.mark.parametrize("service", ["terry", "jerry", "gary"])
def test_a_service_runs_alone_without_a_gateway(service: str, stack: Stack, tmp_path: Path) -> None:
    """`terry-server` / `jerry-server` / `gary-server --port P` with demo models and no QUEUE_URL (gary keeps its
    Redis: sessions' jobs and rooms live there), then the requests a curl user sends."""
    port = free_port()
    log = tmp_path / f"{service}.log"
    env = stack_env(DEMO_MODELS="1", DATA_DIR=str(tmp_path / "data"), LOCAL_MODELS_DIR=str(tmp_path / "models"),
                    REDIS_URL=stack.redis_url, TRANSFER_DIR=str(tmp_path / "transfer"))
    proc = start_service(f"{service}.cli", port, env, log)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(url, proc, log)
        health = httpx.get(f"{url}/health", timeout=10).json()
        assert health["queue_mode"] == "solo", health
        steps = Steps()
        if service == "terry":
            wav = tmp_path / "in.wav"
            wav.write_bytes(wav_bytes(6.0))
            payload = {"audio": base64.b64encode(wav.read_bytes()).decode(), "variation": "lofi_chill", "flowstep": 0.13}
            (tmp_path / "body.json").write_text(json.dumps(payload))
            with steps.step("transform"):
                proc_curl = curl("-X", "POST", f"{url}/transform", "-H", "Content-Type: application/json",
                                 "-d", f"@{tmp_path / 'body.json'}")
            body = json.loads(proc_curl.stdout)
            assert "error" not in body, body
            assert body["metadata"]["lease"] == "local" and body["metadata"]["variation"] == "lofi_chill"
            assert len(base64.b64decode(body["audio"])) > 100_000
        elif service == "jerry":
            with steps.step("generate"):
                proc_curl = curl("-X", "POST", f"{url}/generate", "-H", "Content-Type: application/json",
                                 "-d", '{"prompt": "ambient pad", "steps": 4, "return_format": "base64"}')
            body = json.loads(proc_curl.stdout)
            assert body.get("success") is True, body
        else:
            (tmp_path / "body.json").write_text(json.dumps({"audio_data": base64.b64encode(wav_bytes(4.0)).decode(),
                                                            "model_name": MODEL, "prompt_duration": 2}))
            sid = ""
            for n in range(1, 3):  # the second job of a session, as in gateway mode
                with steps.step(f"process audio, then poll #{n}"):
                    route = "process_audio" if n == 1 else "continue_music"
                    if n == 2:
                        (tmp_path / "body.json").write_text(json.dumps({"session_id": sid, "model_name": MODEL}))
                    body = json.loads(curl("-X", "POST", f"{url}/api/juce/{route}", "-H",
                                           "Content-Type: application/json", "-d", f"@{tmp_path / 'body.json'}").stdout)
                    assert body["success"] is True, body
                    sid = body["session_id"]
                    while (poll := httpx.get(f"{url}/api/juce/poll_status/{sid}", timeout=10).json())["status"] != "completed":
                        assert poll["status"] != "failed", poll
                        time.sleep(0.25)
                assert poll["audio_data"]
        text = log.read_text()
        assert text.count("running solo") == 1, text[-3000:]
    finally:
        stop(proc)


def test_a_configured_but_dead_gateway_is_a_clear_503(stack: Stack, tmp_path: Path) -> None:
    """Solo is a choice (QUEUE_URL empty), never a silent fallback: with a gateway named but down, terry says so."""
    port = free_port()
    log = tmp_path / "terry.log"
    env = stack_env(DEMO_MODELS="1", DATA_DIR=str(tmp_path / "data"), LOCAL_MODELS_DIR=str(tmp_path / "models"),
                    REDIS_URL=stack.redis_url, QUEUE_URL=f"http://127.0.0.1:{free_port()}",
                    TERRY_LEASE_WAIT_SECONDS="5", TRANSFER_DIR=str(tmp_path / "transfer"))
    proc = start_service("terry.cli", port, env, log)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(url, proc, log)
        assert httpx.get(f"{url}/health", timeout=10).json()["queue_mode"] == "gateway"
        r = httpx.post(f"{url}/transform", json={"audio": base64.b64encode(wav_bytes(6.0)).decode(),
                                                 "variation": "lofi_chill"}, timeout=60)
        assert r.status_code == 503 and r.json()["code"] == "QUEUE_UNAVAILABLE", r.text
        assert "unreachable" in r.json()["error"]
    finally:
        stop(proc)
